"""A robot control loop talking to mmagent: fixed 20 Hz, never blocks on the network.

Each tick: read the newest camera frame (a capture thread reads the video file or webcam and
JPEG-encodes at the send rate), send a frame every 1/fps seconds, send the WAV's audio up to
"now" (real time), drain received events (print reply text, execute actions), then sleep until
the next tick. Sends are queued on the client's own thread (``SyncRealtimeClient``), so the
loop never waits for the socket. At the end it prints the loop's period error (jitter).

    python examples/robot_loop.py --url ws://127.0.0.1:8765/v1/realtime --video clip.mp4 --wav hello.wav

``--speak``: the replies come as the server's voice too (output_modalities ["audio"]) and play
through ``aplay`` / sox's ``play`` (a subprocess fed by its own thread); ``--speak-to DIR`` saves
each reply as DIR/<response_id>.wav instead. Speech over a reply still playing stops it and
tells the server how much was heard (conversation.item.truncate), so the stored turn matches.

Exit code 0 when at least one reply completed; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.client import SyncRealtimeClient
from server.client_audio import Player, WavSink


class FrameGrabber(threading.Thread):
    """Reads frames (at the source's rate) and keeps the newest one JPEG-encoded."""

    def __init__(self, source: str, fps: float, width: int = 640) -> None:
        super().__init__(name="frame-grabber", daemon=True)
        import cv2

        self.cv2 = cv2
        self.cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not self.cap.isOpened():
            raise SystemExit(f"cannot open video source {source!r}")
        self.src_fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.send_period, self.width = 1.0 / fps, width
        self.latest: bytes | None = None
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        cv2 = self.cv2
        last_encode = 0.0
        while not self.stop_flag.is_set():
            ok, frame = self.cap.read()
            if not ok:   # a file ended: loop it
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self.cap.read()
                if not ok:
                    return
            now = time.monotonic()
            if now - last_encode >= self.send_period * 0.5:
                h, w = frame.shape[:2]
                if w > self.width:
                    frame = cv2.resize(frame, (self.width, int(h * self.width / w)))
                ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
                if ok:
                    with self.lock:
                        self.latest = jpg.tobytes()
                last_encode = now
            time.sleep(1.0 / self.src_fps)

    def take(self) -> bytes | None:
        with self.lock:
            jpg, self.latest = self.latest, None
        return jpg


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit("the WAV must be PCM16")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate not in (16000, 24000, 48000):
        import soxr

        pcm = (soxr.resample(pcm.astype(np.float32) / 32768, rate, 24000) * 32767).astype(np.int16)
        rate = 24000
    return pcm, rate


def raise_priority() -> str:
    """Real-time scheduling for this process's threads, as control loops usually run; else nice -10."""
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "SCHED_FIFO 10"
    except (AttributeError, PermissionError, OSError):
        pass
    try:
        os.nice(-10)
        return "nice -10"
    except (AttributeError, PermissionError, OSError):
        return "default (no permission to raise priority)"


def execute(action: dict) -> None:
    """Stand-in for the robot's actuators: report the action (a real robot moves here)."""
    print(f"\n[action] {action['name']}({json.dumps(action.get('arguments', {}))})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8765/v1/realtime")
    ap.add_argument("--token")
    ap.add_argument("--video", default="0", help="video file, or a webcam index (default 0)")
    ap.add_argument("--wav", help="PCM16 WAV to stream at real time as the microphone")
    ap.add_argument("--hz", type=float, default=20.0, help="control loop rate")
    ap.add_argument("--fps", type=float, default=2.0, help="camera frames sent per second")
    ap.add_argument("--duration", type=float, default=30.0, help="stop after this many seconds")
    ap.add_argument("--replies", type=int, default=1, help="stop after this many completed replies")
    ap.add_argument("--tail", type=float, default=1.0, help="seconds of silence sent after the WAV")
    ap.add_argument("--speak", action="store_true", help="spoken replies, played with aplay or sox's play")
    ap.add_argument("--speak-to", metavar="DIR", help="spoken replies, saved as DIR/<response_id>.wav")
    ap.add_argument("--speak-rate", type=int, default=24000, help="output audio rate (Hz)")
    ap.add_argument("--priority", action="store_true",
                    help="run the loop's threads with real-time scheduling (SCHED_FIFO) when permitted")
    args = ap.parse_args(argv)

    sys.setswitchinterval(0.0005)   # let the loop thread get the GIL back quickly after a sleep
    if args.priority:
        print(f"scheduling: {raise_priority()}", flush=True)   # before any thread starts: they inherit it
    grabber = FrameGrabber(args.video, args.fps)
    grabber.start()
    pcm, rate = (read_wav(args.wav) if args.wav else (np.zeros(0, np.int16), 24000))
    pcm = np.concatenate([pcm, np.zeros(int(rate * args.tail), np.int16)])
    client = SyncRealtimeClient(args.url, token=args.token)
    player: Player | None = None
    sink: WavSink | None = None
    audio_bytes = 0

    def count(pcm: bytes, rate: int, response_id: str, item_id: str) -> None:
        nonlocal audio_bytes
        audio_bytes += len(pcm)

    count.end = lambda response_id: None  # type: ignore[attr-defined]
    if args.speak or args.speak_to:
        if args.speak_to:
            sink = WavSink(args.speak_to)
            client.on_audio(sink)
        else:
            player = Player.start(args.speak_rate)
            client.on_audio(player)
        client.on_audio(count)
    client.connect()
    client.update_session(audio={"input": {"format": {"type": "audio/pcm", "rate": rate}}})
    if args.speak or args.speak_to:
        client.speak(args.speak_rate)
    print(f"session {client.session_id}", flush=True)

    period = 1.0 / args.hz
    frame_every = max(1, round(args.hz / args.fps))
    sent_samples, tick = 0, 0
    periods: list[float] = []
    streaming = False
    periods_streaming: list[float] = []
    completed, events_seen, errors = 0, 0, []
    t0 = time.perf_counter()
    next_t = t0
    last = t0
    while True:
        now = time.perf_counter()
        if tick:
            periods.append(now - last)
            if streaming:
                periods_streaming.append(now - last)
        last = now
        # 1. camera
        if tick % frame_every == 0:
            jpg = grabber.take()
            if jpg is not None:
                client.send_frame(jpg)
        # 2. microphone: everything up to now, at real time
        due = min(len(pcm), int((now - t0) * rate))
        if due > sent_samples:
            client.append_audio(pcm[sent_samples:due])
            sent_samples = due
        # 3. events, never waiting
        for ev in client.poll():
            events_seen += 1
            t = ev["type"]
            if t in ("response.output_text.delta", "response.output_audio_transcript.delta"):
                streaming = True
                print(ev["delta"], end="", flush=True)
            elif t == "response.output_audio.delta":
                streaming = True
            elif t == "response.action":
                execute(ev)
            elif t == "input_audio_buffer.speech_started" and player is not None and player.playing():
                item = player.item_id
                heard_ms = player.stop()          # barge-in: silence, and say what was heard
                if item is not None:
                    client.truncate(item, heard_ms)
            elif t == "conversation.item.input_audio_transcription.completed":
                print(f"[heard] {ev['transcript']!r}", flush=True)
            elif t == "response.done":
                streaming = False
                completed += ev["response"]["status"] == "completed"
                print(f"\n[reply {ev['response']['status']}]", flush=True)
            elif t == "error":
                errors.append(ev["error"]["code"])
                print(f"[error] {ev['error']['code']}: {ev['error']['message']}", flush=True)
        if completed >= args.replies or now - t0 > args.duration:
            break
        # 4. sleep to the next tick (absolute deadlines: errors do not accumulate)
        tick += 1
        next_t += period
        delay = next_t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.perf_counter()   # overran: resynchronise instead of bursting
    grabber.stop_flag.set()
    client.close()
    if player is not None:
        player.close()
    if sink is not None:
        sink.close()

    err_ms = np.abs(np.asarray(periods) - period) * 1000 if periods else np.zeros(1)
    err_stream = np.abs(np.asarray(periods_streaming) - period) * 1000 if periods_streaming else err_ms
    summary = {
        "ticks": len(periods) + 1, "hz": args.hz, "replies_completed": completed, "events": events_seen,
        "errors": errors, "send_errors": len(client.send_errors),
        "audio_received_s": round(audio_bytes / 2 / args.speak_rate, 3),
        "wav_files": [str(p) for p in sink.files] if sink is not None else [],
        "period_error_ms": {"p50": round(float(np.percentile(err_ms, 50)), 3),
                            "p99": round(float(np.percentile(err_ms, 99)), 3),
                            "max": round(float(err_ms.max()), 3)},
        "period_error_while_streaming_ms": {"p99": round(float(np.percentile(err_stream, 99)), 3),
                                            "n": len(periods_streaming)},
        # The three worst ticks (tick number, error in ms): where in the run the loop lost time.
        "worst_ticks": [[int(i) + 1, round(float(err_ms[i]), 3)] for i in np.argsort(err_ms)[::-1][:3]],
    }
    print(f"\nloop period error: p50 {summary['period_error_ms']['p50']} ms, "
          f"p99 {summary['period_error_ms']['p99']} ms, max {summary['period_error_ms']['max']} ms "
          f"(while a reply streamed: p99 {summary['period_error_while_streaming_ms']['p99']} ms)")
    print(json.dumps(summary), flush=True)
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
