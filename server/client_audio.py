"""The server's voice on the client side: decode ``response.output_audio.delta``, save or play it.

    c.on_audio(WavSink("replies/"))          # one WAV per response: replies/<response_id>.wav
    player = Player.start(rate=24000)         # aplay / sox's play as a subprocess, fed by a thread
    c.on_audio(player)
    ...
    heard_ms = player.stop()                  # barge-in: silence now; how much of the reply played

Both are ``AudioHandler``\\s: ``handler(pcm, rate, response_id, item_id)`` is called (on the
client's thread) with each delta's PCM16 LE mono bytes; ``handler.end(response_id)`` when a
response is done. They never block the caller: files are written in small appends, a player
queues its bytes for its own thread.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import threading
import time
import wave
from pathlib import Path
from typing import Any, Protocol


class AudioHandler(Protocol):
    def __call__(self, pcm: bytes, rate: int, response_id: str, item_id: str) -> None: ...

    def end(self, response_id: str) -> None: ...


def output_rate(session: dict[str, Any] | None) -> int:
    """The session's output PCM rate (``audio.output.format.rate``, or ``sample_rate`` for the
    rates GA's models do not list); 24000 when not said."""
    fmt = (((session or {}).get("audio") or {}).get("output") or {}).get("format") or {}
    return int(fmt.get("rate") or fmt.get("sample_rate") or 24000)


class WavSink:
    """Writes each response's audio to ``directory/<response_id>.wav`` (PCM16 mono)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, wave.Wave_write] = {}
        self.files: list[Path] = []

    def __call__(self, pcm: bytes, rate: int, response_id: str, item_id: str) -> None:
        w = self._open.get(response_id)
        if w is None:
            path = self.directory / f"{response_id}.wav"
            w = wave.open(str(path), "wb")  # noqa: SIM115  (kept open across deltas; closed at end())
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            self._open[response_id] = w
            self.files.append(path)
        w.writeframes(pcm)

    def end(self, response_id: str) -> None:
        w = self._open.pop(response_id, None)
        if w is not None:
            w.close()

    def close(self) -> None:
        for rid in list(self._open):
            self.end(rid)


def player_command(rate: int) -> list[str] | None:
    """A command that plays raw PCM16 mono at ``rate`` from stdin: aplay (ALSA) or sox's play."""
    if shutil.which("aplay"):
        return ["aplay", "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(rate)]
    if shutil.which("play"):
        return ["play", "-q", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(rate), "-"]
    return None


class Player:
    """Plays the server's audio through a subprocess (``command`` reads raw PCM16 on stdin),
    written by a thread of its own so the caller never waits for the sound device.

    ``played_ms(item_id)`` estimates playout the way a Realtime client reports it in
    ``conversation.item.truncate``: the audio handed to the device, capped by wall-clock time
    since the item's first byte. ``stop()`` silences it at once (barge-in) and returns that.
    """

    def __init__(self, command: list[str], rate: int) -> None:
        self.command, self.rate = command, rate
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._item: str | None = None
        self._item_bytes = 0
        self._item_started = 0.0
        self._generation = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="audio-player", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, rate: int = 24000, command: list[str] | None = None) -> Player:
        """A player with aplay or play; RuntimeError when neither is installed."""
        cmd = command or player_command(rate)
        if cmd is None:
            raise RuntimeError("no audio player found (install alsa-utils for aplay, or sox for play)")
        return cls(cmd, rate)

    def __call__(self, pcm: bytes, rate: int, response_id: str, item_id: str) -> None:
        with self._lock:
            if item_id != self._item:
                self._item, self._item_bytes, self._item_started = item_id, 0, time.monotonic()
            self._item_bytes += len(pcm)
            gen = self._generation
        self._queue.put(gen.to_bytes(4, "little") + pcm)

    def end(self, response_id: str) -> None:
        pass

    @property
    def item_id(self) -> str | None:
        return self._item

    def played_ms(self) -> int:
        """Milliseconds of the current item that have played by now (at most what was received)."""
        with self._lock:
            if self._item is None:
                return 0
            received = 1000 * self._item_bytes / 2 / self.rate
            return int(min(received, 1000 * (time.monotonic() - self._item_started)))

    def playing(self) -> bool:
        with self._lock:
            if self._item is None:
                return False
            received = 1000 * self._item_bytes / 2 / self.rate
        return self.played_ms() < received

    def stop(self) -> int:
        """Silence now (queued audio dropped, the player process restarted on the next audio);
        returns how much of the current item played."""
        played = self.played_ms()
        with self._lock:
            self._generation += 1
            self._item = None
            proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
        return played

    def close(self) -> None:
        self.stop()
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            gen, pcm = int.from_bytes(data[:4], "little"), data[4:]
            with self._lock:
                if gen != self._generation:
                    continue          # stopped since it was queued
                proc = self._proc
                if proc is None or proc.poll() is not None:
                    try:
                        proc = self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    except OSError as exc:
                        self.errors.append(str(exc))
                        continue
            try:
                assert proc.stdin is not None
                proc.stdin.write(pcm)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:   # killed by stop(), or no device
                if proc.poll() not in (None, -9):
                    self.errors.append(f"{self.command[0]} ended: {exc}")
