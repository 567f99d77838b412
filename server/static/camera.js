// Webcam: live preview in a <video>, JPEG frames drawn through a canvas at a fixed rate and width.

export const DEFAULT_FPS = 2;
export const DEFAULT_WIDTH = 640;
const JPEG_QUALITY = 0.8;

export class Camera {
  /**
   * @param {HTMLVideoElement} video  preview element
   * @param {(jpeg: Blob) => void} onFrame  called with each captured JPEG while the camera is on
   */
  constructor(video, onFrame, { fps = DEFAULT_FPS, width = DEFAULT_WIDTH } = {}) {
    this.video = video;
    this.onFrame = onFrame;
    this.fps = fps;
    this.width = width;
    this.stream = null;
    this.timer = null;
    this.canvas = document.createElement("canvas");
    this.busy = false;
  }

  get running() {
    return this.stream !== null;
  }

  /** Open the camera; throws the getUserMedia error (NotAllowedError, NotFoundError, ...) as is. */
  async start() {
    this.stop();
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: this.width }, facingMode: "user" },
      audio: false,
    });
    this.stream = stream;
    this.video.srcObject = stream;
    this.video.muted = true;
    await this.video.play().catch(() => {});
    this.timer = setInterval(() => this.capture(), Math.round(1000 / this.fps));
  }

  /** Draw the current video frame scaled to `width` and hand it over as JPEG. */
  capture() {
    const v = this.video;
    if (this.busy || !v.videoWidth || !v.videoHeight) return;
    const w = Math.min(this.width, v.videoWidth);
    const h = Math.round((v.videoHeight * w) / v.videoWidth);
    this.canvas.width = w;
    this.canvas.height = h;
    this.canvas.getContext("2d").drawImage(v, 0, 0, w, h);
    this.busy = true; // skip a tick rather than queue encodes on a slow machine
    this.canvas.toBlob(
      (blob) => {
        this.busy = false;
        if (blob && this.stream) this.onFrame(blob, w, h);
      },
      "image/jpeg",
      JPEG_QUALITY,
    );
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.video.srcObject = null;
  }
}
