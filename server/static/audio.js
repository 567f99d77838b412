// Microphone: getUserMedia -> AudioWorklet (pcm-worklet.js) -> PCM16 chunks at the session rate.

export const DEFAULT_CHUNK_MS = 20;

/** Base64 of an ArrayBuffer, in slices so large buffers do not overflow the argument list. */
export function bufferToBase64(buf) {
  const bytes = new Uint8Array(buf);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

export class Microphone {
  /**
   * @param {object} opts
   * @param {(b64: string, samples: number) => void} opts.onChunk  PCM16 mono chunk, base64
   * @param {(rms: number) => void} opts.onLevel                  0..1 level for the meter
   */
  constructor({ onChunk, onLevel, chunkMs = DEFAULT_CHUNK_MS }) {
    this.onChunk = onChunk;
    this.onLevel = onLevel;
    this.chunkMs = chunkMs;
    this.ctx = null;
    this.node = null;
    this.stream = null;
    this.rate = null;
    this.sending = true;
    this._ack = null;
  }

  get running() {
    return this.ctx !== null;
  }

  /** Start capturing at `rate` Hz; throws the getUserMedia error (NotAllowedError, ...) as is. */
  async start(rate, { sending = true } = {}) {
    await this.stop();
    this.rate = rate;
    this.sending = sending;
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
    const ctx = new AudioContext({ latencyHint: "interactive" });
    try {
      await ctx.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
      const src = ctx.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(ctx, "pcm-encoder", {
        numberOfInputs: 1,
        numberOfOutputs: 0,
        channelCount: 1,
        channelCountMode: "explicit",
        processorOptions: { targetRate: rate, chunkMs: this.chunkMs },
      });
      node.port.onmessage = (ev) => this._onMessage(ev.data);
      node.port.postMessage({ type: "enable", value: sending });
      src.connect(node);
      if (ctx.state === "suspended") await ctx.resume();
      this.ctx = ctx;
      this.node = node;
      this.stream = stream;
    } catch (err) {
      stream.getTracks().forEach((t) => t.stop());
      await ctx.close().catch(() => {});
      throw err;
    }
  }

  _onMessage(msg) {
    if (msg.type === "chunk") {
      this.onLevel(msg.rms);
      const samples = msg.pcm.byteLength / 2;
      this.onChunk(bufferToBase64(msg.pcm), samples);
    } else if (msg.type === "level") {
      this.onLevel(msg.rms);
    } else if (msg.type === "enabled" && this._ack) {
      const done = this._ack;
      this._ack = null;
      done();
    }
  }

  /** Gate sending (push-to-talk). Resolves once the worklet has flushed what it held. */
  setSending(on) {
    const changed = on !== this.sending;
    this.sending = on;
    if (!this.node || !changed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 250); // never hang the UI on a lost message
      this._ack = () => {
        clearTimeout(timer);
        resolve();
      };
      this.node.port.postMessage({ type: "enable", value: on });
    });
  }

  async stop() {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.node) this.node.port.onmessage = null;
    if (this.ctx) await this.ctx.close().catch(() => {});
    this.ctx = null;
    this.node = null;
    this.stream = null;
    this.onLevel(0);
  }
}
