"""Streaming speech synthesis for every reply of the process, on a bounded pool of threads.

One :class:`Synthesizer` per process holds the voice (loaded once) and ``workers`` synthesis
threads. Each reply opens a :class:`SpeechStream`: the server feeds it the reply's text deltas as
they arrive and reads :class:`AudioChunk` s (PCM16 at the session's rate) as they are ready::

    tts = Synthesizer(VoiceConfig())
    stream = tts.open_stream(output_rate=24000)
    stream.feed("Hello, the batteries are ")   # non-blocking: "Hello," is queued at once
    stream.feed("in aisle 7.")
    stream.finish()                            # no more text: the rest is queued
    for chunk in stream.chunks():              # or: async for chunk in stream
        send(chunk.pcm)                        # stream.cancel() on barge-in

Chunking: the first clause of a reply is synthesised alone, or its first ``first_chunk_words``
words when the clause is longer (audio starts after a few words, not after a whole first
sentence has streamed in); later text is synthesised a sentence at a time (better prosody across
commas), split at a clause when a sentence grows past ``max_chunk_chars``.

Scheduling: each stream has at most one chunk in the queue (its chunks are resampled in order
by one soxr stream), and the queue serves the chunk whose audio is needed soonest — a reply's
first chunk at once, a later chunk when the audio already sent would run out — so a long reply
never delays another session's first words. One ONNX call per chunk: batching several
clauses in one call was measured slower on this CPU (bench/tts.py --batching).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import OUTPUT_RATES, VoiceConfig, check_rate
from .errors import ConfigError, InvalidTextError, MMAgentError
from .phonemes import EspeakPhonemizer, clause_phonemes
from .piper import PiperVoice
from .text import Clause, ClauseSplitter, normalize, split_clauses, split_early

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioChunk:
    """A piece of a reply's audio and the text it speaks.

    ``pcm``: PCM16 little-endian mono at ``sample_rate``. ``start_ms`` / ``duration_ms``: where it
    sits in the reply's audio (the sum of earlier chunks' durations). ``final``: the last chunk of
    the reply (it may be short: the resampler's tail).
    """

    index: int
    pcm: bytes
    sample_rate: int
    text: str
    start_ms: float
    duration_ms: float
    final: bool

    @property
    def samples(self) -> np.ndarray:
        """(n,) int16 view of ``pcm``."""
        return np.frombuffer(self.pcm, dtype=np.int16)


@dataclass
class _Job:
    stream: SpeechStream
    clauses: list[Clause]
    final: bool


class SpeechStream:
    """One reply's speech: feed text, read chunks. Thread-safe; made by ``Synthesizer.open_stream``."""

    def __init__(self, synth: Synthesizer, output_rate: int,
                 on_chunk: Callable[[AudioChunk], None] | None, speed: float = 1.0) -> None:
        import soxr

        self._synth, self.output_rate, self._on_chunk = synth, output_rate, on_chunk
        self.speed = speed
        self._splitter = ClauseSplitter()
        self._pending: list[Clause] = []          # clauses not yet grouped into a job
        self._jobs: deque[_Job] = deque()          # jobs waiting for their turn in the queue
        self._queued = False                       # one job of this stream is in the shared queue
        self._finished = self.cancelled = self.done = False
        self._chunks: list[AudioChunk] = []
        self._cond = threading.Condition()
        self._audio_ms = 0.0                        # audio produced so far
        self._t_first: float | None = None          # when the first chunk was ready
        self.t_open = time.perf_counter()
        self.error: MMAgentError | None = None
        rate = synth.voice.sample_rate
        self._resampler = None if output_rate == rate else soxr.ResampleStream(rate, output_rate, 1, dtype="float32")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aqueue: asyncio.Queue[AudioChunk | None] | None = None

    # ---- input ---------------------------------------------------------------------------------

    def feed(self, delta: str) -> None:
        """Add reply text; complete clauses are queued for synthesis at once."""
        if not isinstance(delta, str):
            raise InvalidTextError(f"reply text must be a string, got {type(delta).__name__}")
        with self._cond:
            if self._finished or self.cancelled:
                return
            self._pending += self._splitter.feed(delta)
            words = self._synth.config.first_chunk_words
            if words and not self._pending and self._first_chunk_open():
                self._pending += self._splitter.cut_words(words)
            self._group(final=False)
        self._synth._schedule(self)

    def finish(self) -> None:
        """The reply's text is complete: queue what is left (the last chunk is marked final)."""
        with self._cond:
            if self._finished or self.cancelled:
                return
            self._finished = True
            self._pending += self._splitter.flush()
            self._group(final=True)
        self._synth._schedule(self)

    def cancel(self) -> None:
        """Barge-in or a cancelled response: drop queued text; no chunk is delivered after this."""
        with self._cond:
            if self.done:
                return
            self.cancelled = True
            self._jobs.clear()
            self._pending.clear()
        self._close()

    def _first_chunk_open(self) -> bool:
        return not self._jobs and not self._chunks and not self._queued

    def _group(self, final: bool) -> None:
        # The first clause alone; then whole sentences, split at a clause past max_chunk_chars.
        limit = self._synth.config.max_chunk_chars
        while self._pending:
            first = self._first_chunk_open()
            take = 0
            if first:
                take = 1
                words = self._synth.config.first_chunk_words
                if words:      # a whole first sentence at once (a canned reply): start after a phrase
                    self._pending[:1] = split_early(self._pending[0], words)
            else:
                size = 0
                for k, c in enumerate(self._pending):
                    size += len(c.text) + 2
                    if c.sentence_end or size >= limit:
                        take = k + 1
                        break
                if not take and final:
                    take = len(self._pending)
            if not take:
                break
            group, self._pending = self._pending[:take], self._pending[take:]
            self._jobs.append(_Job(self, group, final=final and not self._pending))
        if final and not self._pending and (not self._jobs or not self._jobs[-1].final):
            self._jobs.append(_Job(self, [], final=True))     # flushes the resampler, marks the end

    # ---- output --------------------------------------------------------------------------------

    def chunks(self, timeout: float | None = None) -> Iterator[AudioChunk]:
        """Yield chunks in order as they are ready, until the reply's last (or a cancel).

        Raises the synthesis error, if one happened (the stream is then done). ``timeout``:
        seconds to wait for each chunk (TimeoutError past it).
        """
        for i in itertools.count():
            with self._cond:
                if not self._cond.wait_for(lambda i=i: len(self._chunks) > i or self.done, timeout):  # type: ignore[misc]
                    raise TimeoutError(f"no audio chunk within {timeout} s")
                if len(self._chunks) > i:
                    chunk = self._chunks[i]
                elif self.error is not None:
                    raise self.error
                else:
                    return
            yield chunk

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        """Chunks on an asyncio loop, without blocking it (delivered through call_soon_threadsafe)."""
        with self._cond:
            self._loop, self._aqueue = asyncio.get_running_loop(), asyncio.Queue()
            for chunk in self._chunks:
                self._aqueue.put_nowait(chunk)
            if self.done:
                self._aqueue.put_nowait(None)
        queue = self._aqueue
        while (item := await queue.get()) is not None:
            yield item
        if self.error is not None:
            raise self.error

    @property
    def audio_ms(self) -> float:
        """Milliseconds of audio produced so far."""
        return self._audio_ms

    @property
    def first_chunk_s(self) -> float | None:
        """Seconds from open_stream to the first chunk (None before it)."""
        return None if self._t_first is None else self._t_first - self.t_open

    def heard_text(self, audio_end_ms: float) -> str:
        """The reply text a listener has heard after ``audio_end_ms`` of playout (barge-in):
        whole chunks before that point, and of the chunk playing then, its words in proportion."""
        words: list[str] = []
        with self._cond:
            for c in self._chunks:
                if c.start_ms + c.duration_ms <= audio_end_ms:
                    words += c.text.split()
                elif c.start_ms < audio_end_ms and c.duration_ms > 0:
                    part = c.text.split()
                    words += part[:round(len(part) * (audio_end_ms - c.start_ms) / c.duration_ms)]
                    break
                else:
                    break
        return " ".join(words)

    # ---- called by the synthesiser's workers ---------------------------------------------------

    def _deadline(self) -> float:
        # When this stream's next audio is needed: at once for the first chunk, else when the audio
        # delivered so far (played from the first chunk on) runs out.
        return self.t_open if self._t_first is None else self._t_first + self._audio_ms / 1000.0

    def _next_job(self) -> _Job | None:
        with self._cond:
            if self.cancelled or not self._jobs:
                self._queued = False
                return None
            return self._jobs.popleft()

    def _deliver(self, job: _Job, audio: np.ndarray) -> None:
        """audio: (n,) float32 at the voice's rate (empty for the final flush)."""
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio, last=job.final)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
        text = " ".join(c.text + c.terminator for c in job.clauses)
        with self._cond:
            if self.cancelled:
                return
            duration = pcm.size * 1000.0 / self.output_rate
            chunk = AudioChunk(len(self._chunks), pcm.tobytes(), self.output_rate, text, self._audio_ms,
                               duration, job.final)
            self._chunks.append(chunk)
            self._audio_ms += duration
            if self._t_first is None:
                self._t_first = time.perf_counter()
            self._cond.notify_all()
            self._push(chunk)
        if self._on_chunk is not None:
            self._on_chunk(chunk)
        if job.final:
            self._close()

    def _fail(self, error: MMAgentError) -> None:
        with self._cond:
            self.error = error
            self._jobs.clear()
        self._close()

    def _close(self) -> None:
        with self._cond:
            if self.done:
                return
            self.done = True
            self._cond.notify_all()
            self._push(None)

    def _push(self, item: AudioChunk | None) -> None:
        if self._loop is not None and self._aqueue is not None:
            try:
                self._loop.call_soon_threadsafe(self._aqueue.put_nowait, item)
            except RuntimeError:          # the loop closed: nobody is listening any more
                pass


class Synthesizer:
    """The voice, its phonemizer and ``workers`` synthesis threads, shared by every reply."""

    def __init__(self, config: VoiceConfig | None = None) -> None:
        self.config = config or VoiceConfig()
        self.voice = PiperVoice(self.config)
        self.phonemizer = EspeakPhonemizer(self.voice.info.espeak_voice)
        self.native_rate = self.voice.sample_rate
        self._heap: list[tuple[float, int, SpeechStream]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"tts-{i}", daemon=True)
                         for i in range(self.config.workers)]
        for t in self._threads:
            t.start()

    def open_stream(self, output_rate: int | None = None, *,
                    on_chunk: Callable[[AudioChunk], None] | None = None, speed: float = 1.0) -> SpeechStream:
        """A new reply. ``output_rate``: PCM16 rate of its chunks (default: the config's);
        ``on_chunk``: called from a synthesis thread with each chunk (keep it short); ``speed``:
        a multiple of the configured pace (0.25..4; a session's ``audio.output.speed``)."""
        rate = check_rate(self.config.output_rate if output_rate is None else output_rate, self.native_rate)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            raise ConfigError(f"speech speed must be a number in [0.25, 4], got {speed!r}")
        return SpeechStream(self, rate, on_chunk, float(speed))

    @property
    def output_rates(self) -> tuple[int, ...]:
        """Every PCM16 rate ``open_stream`` accepts (OUTPUT_RATES and the voice's own)."""
        return tuple(sorted({*OUTPUT_RATES, self.native_rate}))

    @property
    def name(self) -> str:
        """The voice's name (its file's stem, e.g. ``en_US-joe-medium``)."""
        return self.voice.info.name

    def synthesize(self, text: str, output_rate: int | None = None) -> tuple[np.ndarray, list[AudioChunk]]:
        """A whole text at once (blocking): (int16 samples, the chunks they came in)."""
        stream = self.open_stream(output_rate)
        stream.feed(text)
        stream.finish()
        chunks = list(stream.chunks())
        audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.int16)
        return audio, chunks

    def phoneme_ids(self, clauses: list[Clause]) -> list[int]:
        """One chunk's phoneme ids: each clause normalised, phonemised, its terminator put back."""
        # A clause without a terminator (a reply cut off by its token limit, a forced split) keeps
        # none: the voice then ends it without a sentence's final fall, as piper itself does.
        # Normalising can open clauses inside one ("AA batteries (pack of 4) are" → "double A
        # batteries, pack of four, are"); espeak-ng drops their commas, so each is phonemised alone
        # and its comma put back, or the aside runs into the words after it ("four are in" was
        # heard "4R and I-07").
        parts = []
        for k, clause in enumerate(clauses):
            inner = split_clauses(normalize(clause.text)) or [Clause("", "", False)]
            for j, piece in enumerate(inner):
                end = j == len(inner) - 1
                parts.append(clause_phonemes(self.phonemizer.phonemize(piece.text),
                                             clause.terminator if end else piece.terminator,
                                             last=end and k == len(clauses) - 1))
        return self.voice.phoneme_ids("".join(parts))

    def render(self, clauses: list[Clause], speed: float = 1.0) -> np.ndarray:
        """(n,) float32 at the voice's rate for one chunk, with the sentence pause after it."""
        if not clauses:
            return np.zeros(0, np.float32)
        audio = self.voice.synthesize(self.phoneme_ids(clauses), speed)
        if clauses[-1].sentence_end and self.config.sentence_pause_ms:
            pause = np.zeros(self.native_rate * self.config.sentence_pause_ms // 1000, np.float32)
            audio = np.concatenate([audio, pause])
        return audio

    # ---- scheduling ----------------------------------------------------------------------------

    def _schedule(self, stream: SpeechStream) -> None:
        with stream._cond:
            if stream._queued or stream.cancelled or not stream._jobs:
                return
            stream._queued = True
            deadline = stream._deadline()
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._order), stream))
            self._cv.notify()

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._heap or self._closed)
                if self._closed:
                    return
                _, _, stream = heapq.heappop(self._heap)
            job = stream._next_job()
            if job is None:
                continue
            try:
                audio = self.render(job.clauses, stream.speed)
            except MMAgentError as exc:
                stream._fail(exc)
                continue
            except Exception as exc:  # an ONNX runtime failure must end this reply, not the worker
                log.exception("speech synthesis failed")
                stream._fail(MMAgentError(f"speech synthesis failed: {type(exc).__name__}: {exc}",
                                          code="synthesis_failed"))
                continue
            stream._deliver(job, audio)
            with stream._cond:
                stream._queued = False
            self._schedule(stream)

    def close(self) -> None:
        """Stop the synthesis threads (queued work is dropped)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
