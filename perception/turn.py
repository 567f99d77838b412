"""End of turn: has the person finished speaking, or only paused?

Two pieces, both free of sessions and sockets:

- :class:`SmartTurnModel` — Smart Turn v3.2 (pipecat-ai's ONNX model, BSD-2-Clause, 23
  languages): the last 8 s of 16 kHz audio → P(turn complete). The ONNX file is read by path
  from the installed ``pipecat-ai`` wheel; pipecat itself is never imported. Features: Whisper's
  log-mel (faster-whisper's ``FeatureExtractor(feature_size=80, chunk_length=8)``) over the
  zero-mean, unit-variance last 8 s, left-padded with zeros: (1, 80, 800).
- End-of-turn detectors, the pluggable policy the server calls while the user is silent.
  A detector is asked once, when a pause reaches its ``check_ms``, with the utterance so far
  (and the speculative transcript, if one is ready), and answers with a :class:`TurnVerdict`:
  after how much total silence the turn ends, unless speech resumes::

      detector = make_turn_detector(TurnConfig(mode="smart_turn"))
      # StreamingVad(speculative_ms=detector.check_ms, silence_duration_ms=detector.max_silence_ms)
      # on SpeechPaused(audio) at check_ms of silence (in a worker thread: ~50 ms of CPU):
      verdict = detector.decide(audio, sample_rate, transcript=speculative_text)
      # end the turn once silence reaches verdict.end_after_ms; SpeechResumed voids it.

  ``silence`` mode is today's fixed wait (500 ms); ``smart_turn`` asks the model after 200 ms:
  complete → end now; incomplete → wait up to the long limit. With ``use_transcript`` a
  transcript that ends on a word no English sentence ends on ("the", "and", "for") also waits.
  ``eagerness`` (the Realtime API's ``semantic_vad`` setting) picks the threshold and limit.
  With ``text_model="lm"`` the speculative transcript is scored too (:class:`TextTurnModel`:
  SmolLM2-135M's P(the sentence ends here), as LiveKit's turn detector does): the turn ends at
  the check only when Smart Turn and the text both say complete; text that reads unfinished
  ("What time do you") waits like an incomplete turn.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from .config import SAMPLE_RATE
from .errors import ConfigError, InvalidAudioError, ModelLoadError
from .runtime import shared_lazy

SMART_TURN_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE      # 128000 samples: the model sees the last 8 s
N_MELS, N_FRAMES = 80, 800                   # 10 ms log-mel frames over 8 s

TurnMode = Literal["silence", "smart_turn"]
TextModel = Literal["none", "lm"]
Eagerness = Literal["low", "medium", "high", "auto"]
# eagerness → (P(complete) needed to end at the check, the long limit in ms). The limits are the
# Realtime API's documented semantic_vad maximum waits (low 8 s, medium 4 s, high 2 s).
EAGERNESS = {"low": (0.7, 8000), "medium": (0.5, 4000), "high": (0.3, 2000), "auto": (0.5, 4000)}

# P(the sentence ends here) below this: the text is unfinished. Tuned on bench/turn_taking.py's own
# sentences (README, "Turn taking"): their unfinished prefixes score ≤ 0.03 (most < 0.001), the
# complete sentences ≥ 0.015 (most > 0.1).
TEXT_THRESHOLD = 0.01
TEXT_END_TOKENS = (".", "?", "!", "<|im_end|>")


def smart_turn_path() -> Path:
    """Where the installed pipecat-ai wheel keeps Smart Turn v3.2 (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("pipecat")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root).parent / SMART_TURN_FILE
        if path.is_file():
            return path
    raise ModelLoadError(f"Smart Turn model not found ({SMART_TURN_FILE}); install pipecat-ai==1.14.0 with "
                         f"--no-deps (requirements.lock does)")


class SmartTurnModel:
    """Smart Turn v3.2 on onnxruntime: ``probability(audio16k)`` → P(the turn is complete).

    Thread-safe (one ONNX session; onnxruntime sessions may be run from several threads).
    """

    def __init__(self, path: str | Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        model = Path(path) if path is not None else smart_turn_path()
        if not model.is_file():
            raise ModelLoadError(f"Smart Turn model {str(model)!r} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"cannot load Smart Turn model {str(model)!r}: {type(exc).__name__}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.features = FeatureExtractor(feature_size=N_MELS, chunk_length=WINDOW_S)
        self.path = model

    def featurize(self, audio: np.ndarray) -> np.ndarray:
        """(n,) float32 at 16 kHz → (80, 800) log-mel of the last 8 s (left-padded with zeros)."""
        x = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
        x = np.pad(x, (WINDOW_SAMPLES - x.size, 0))
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mel = self.features(x)[:, :N_FRAMES]
        assert mel.shape == (N_MELS, N_FRAMES), mel.shape
        return mel.astype(np.float32)

    def probability(self, audio: np.ndarray) -> float:
        """P(complete) for an utterance ending now: (n,) float32 mono at 16 kHz."""
        return self.probabilities([audio])[0]

    def probabilities(self, batch: list[np.ndarray]) -> list[float]:
        """One ONNX call for several utterances (sessions pausing at the same time)."""
        if not batch:
            return []
        feats = np.stack([self.featurize(a) for a in batch])                  # (B, 80, 800)
        out = np.asarray(self.session.run(None, {self.input_name: feats})[0]).reshape(-1)
        assert out.shape == (len(batch),), out.shape
        return [float(p) for p in out]


_model_lock = threading.Lock()


def load_smart_turn(path: str | None = None, threads: int = 1) -> SmartTurnModel:
    """The process-wide Smart Turn model for (path, threads), loaded once."""
    with _model_lock:
        lazy = shared_lazy("smart_turn", ("smart_turn", path, threads), lambda: SmartTurnModel(path, threads=threads))
    return lazy.get()


# ---- detectors --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TurnConfig:
    """How the end of a turn is decided (``make_turn_detector`` builds the detector).

    ``mode``: "silence" (fixed wait of ``silence_ms``) or "smart_turn" (ask the model at
    ``check_ms`` of silence; end if P(complete) ≥ the eagerness threshold, else wait until the
    eagerness limit, or ``max_silence_ms`` when set). ``use_transcript``: a speculative transcript
    ending on a dangling word (English) also waits. ``text_model="lm"``: a speculative transcript
    the language model scores below ``text_threshold`` (P(the sentence ends here)) waits
    ``text_wait_ms`` (None: the long limit); no transcript, no text check.
    """

    mode: TurnMode = "silence"
    silence_ms: int = 500
    check_ms: int = 200
    eagerness: Eagerness = "auto"
    threshold: float | None = None        # None = the eagerness default
    max_silence_ms: int | None = None     # None = the eagerness default
    use_transcript: bool = True
    confident: float | None = None        # set: P between threshold and this waits unsure_ms, not 0
    unsure_ms: int = 500
    model_path: str | None = None         # None = Smart Turn v3.2 from pipecat-ai
    threads: int = 1
    text_model: TextModel = "none"        # "lm": the transcript must also read finished (TextTurnModel)
    text_threshold: float = TEXT_THRESHOLD  # P(sentence ends) below this: the text is unfinished
    text_wait_ms: int | None = None       # an unfinished text waits this long; None = the long limit
    text_sure: float | None = None        # set: a text scored ≥ this ends a turn the audio calls
                                          # unfinished after unsure_ms (Smart Turn misjudges a voice)

    def __post_init__(self) -> None:
        if self.mode not in ("silence", "smart_turn"):
            raise ConfigError(f"turn.mode must be 'silence' or 'smart_turn', got {self.mode!r}")
        if self.eagerness not in EAGERNESS:
            raise ConfigError(f"turn.eagerness must be one of {sorted(EAGERNESS)}, got {self.eagerness!r}")
        for name in ("silence_ms", "check_ms", "threads", "unsure_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"turn.{name} must be a positive integer, got {value!r}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"turn.threshold must be in (0, 1), got {self.threshold}")
        if self.confident is not None and not (0.0 < self.confident < 1.0
                                               and self.confident > (self.threshold or EAGERNESS[self.eagerness][0])):
            raise ConfigError(f"turn.confident must be in (threshold, 1), got {self.confident}")
        limit = self.max_silence_ms
        if limit is not None and (not isinstance(limit, int) or limit <= self.check_ms):
            raise ConfigError(f"turn.max_silence_ms must be an integer above check_ms ({self.check_ms}), got {limit!r}")
        if self.text_model not in ("none", "lm"):
            raise ConfigError(f"turn.text_model must be 'none' or 'lm', got {self.text_model!r}")
        if self.text_model == "lm" and self.mode != "smart_turn":
            raise ConfigError("turn.text_model 'lm' needs turn.mode 'smart_turn'")
        if (not isinstance(self.text_threshold, (int, float)) or isinstance(self.text_threshold, bool)
                or not 0.0 < self.text_threshold < 1.0):
            raise ConfigError(f"turn.text_threshold must be in (0, 1), got {self.text_threshold!r}")
        sure = self.text_sure
        if sure is not None and (self.text_model != "lm" or isinstance(sure, bool) or not isinstance(sure, (int, float))
                                 or not self.text_threshold < sure < 1.0):
            raise ConfigError(f"turn.text_sure needs text_model 'lm' and a value in (text_threshold, 1), got {sure!r}")
        wait = self.text_wait_ms
        if wait is not None and (not isinstance(wait, int) or isinstance(wait, bool) or wait <= self.check_ms):
            raise ConfigError(f"turn.text_wait_ms must be an integer above check_ms ({self.check_ms}), got {wait!r}")


@dataclass(frozen=True)
class TurnVerdict:
    """A detector's answer at a pause: the turn ends when silence reaches ``end_after_ms`` (which
    may already be the case: end now), unless speech resumes first.

    ``probability``: the model's P(complete), None when no model was asked. ``reason``:
    "silence", "complete", "unsure", "incomplete", "transcript_incomplete", "text_incomplete" or
    "audio_incomplete" (Smart Turn said incomplete, the text reads finished: ``text_wait_ms``).
    ``text_probability``: the language model's P(the sentence ends here), None when not asked.
    """

    end_after_ms: int
    probability: float | None
    reason: str
    text_probability: float | None = None


class EndOfTurnDetector(Protocol):
    """What the server needs: when to ask, the longest wait, and the decision itself."""

    name: str
    check_ms: int          # ask at this much silence (StreamingVad's speculative point)
    max_silence_ms: int    # the turn always ends here (StreamingVad's silence_duration_ms)

    def decide(self, audio: np.ndarray, sample_rate: int, *, transcript: str | None = None) -> TurnVerdict:
        """``audio``: the utterance so far, pause included, mono int16 or float32 at ``sample_rate``."""
        ...


class SilenceDetector:
    """Today's rule: the turn ends after ``silence_ms`` of silence, whatever was said."""

    name = "silence"

    def __init__(self, silence_ms: int = 500) -> None:
        self.check_ms = self.max_silence_ms = silence_ms

    def decide(self, audio: np.ndarray, sample_rate: int, *, transcript: str | None = None) -> TurnVerdict:
        return TurnVerdict(self.max_silence_ms, None, "silence")


# Words an English sentence rarely ends on: articles, possessive determiners, conjunctions, a few
# prepositions a kiosk customer trails off after ("I'm looking for the", "a bottle of"), fillers.
# Kept short on purpose: it can only delay a turn the model called complete, and words that often
# do end a sentence ("Yes, I do", "Which aisle is it in?") are left out. Whisper ends every
# transcript with a period, so only the last word is evidence, never the punctuation.
DANGLING_WORDS = frozenset({
    "a", "an", "the", "my", "your", "his", "her", "our", "their",
    "and", "or", "but", "nor", "because", "if", "although", "than",
    "of", "for", "to", "with", "from",
    "um", "uh", "er",
})
_LAST_WORD = re.compile(r"([A-Za-z']+)[^A-Za-z']*$")


def transcript_incomplete(transcript: str) -> bool:
    """True when ``transcript`` stops on a word no sentence ends on ("... looking for the")."""
    text = transcript.strip()
    if not text or text.endswith(("...", "…", ",", "-")):
        return bool(text)
    m = _LAST_WORD.search(text)
    return m is not None and m.group(1).lower() in DANGLING_WORDS


# ---- the text model: does the transcript read finished? -----------------------------------------

_TRAILING = re.compile(r"[\s.?!,;:…\-]+$")
_MAX_TEXT_TOKENS = 96          # the end of a long transcript is what matters


def normalise_transcript(transcript: str) -> str:
    """Whisper's text as the language model should see it: no trailing punctuation (Whisper ends
    nearly every transcript with a period), single spaces, the first letter upper case."""
    text = _TRAILING.sub("", " ".join(transcript.split()))
    return text[:1].upper() + text[1:]


class TextTurnModel:
    """P(the sentence ends here) for a transcript, from a small causal LM (SmolLM2-135M-Instruct,
    the project's embedded model, as the local responder loads it): the probability that the
    next token after ``<|im_start|>user\n{text}`` is ".", "?", "!" or ``<|im_end|>``.

    One forward pass over ~10-20 tokens; :meth:`probabilities` takes several transcripts in one
    pass (right-padded, each read at its own last token), which on a CPU costs little more than
    one: the pass is bound by reading the weights (8 transcripts: 410 ms against 8 × 115 ms, 2-core
    EPYC). Thread-safe (one lock around the forward pass). ``llm``: a loaded
    ``agent.responders.LocalLLM`` (None: a CPU one of the default model).
    """

    def __init__(self, llm: Any | None = None) -> None:
        import torch

        if llm is None:
            from agent.config import LocalLLMConfig
            from agent.responders.local import LocalLLM

            llm = LocalLLM(LocalLLMConfig(device="cpu"))
        llm.load()
        self.tokenizer, self.model = llm.tokenizer, llm.model
        self.device = next(self.model.parameters()).device
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in TEXT_END_TOKENS]
        unk = self.tokenizer.unk_token_id
        if any(i is None or (unk is not None and i == unk) for i in ids):
            raise ModelLoadError(f"language model has no single tokens for {TEXT_END_TOKENS}")
        self.end_ids = torch.tensor(ids, device=self.device)
        self.prefix = self.tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
        self._lock = threading.Lock()

    def probability(self, transcript: str) -> float:
        """P(the sentence ends after ``transcript``); 1.0 for an empty one (nothing to go on)."""
        return self.probabilities([transcript])[0]

    def probabilities(self, transcripts: list[str]) -> list[float]:
        """:meth:`probability` of each transcript, in one forward pass."""
        import torch

        out = [1.0] * len(transcripts)
        rows: list[tuple[int, list[int]]] = []
        for i, transcript in enumerate(transcripts):
            text = normalise_transcript(transcript)
            if text:
                rows.append((i, self.prefix + self.tokenizer(text, add_special_tokens=False)["input_ids"][
                    -_MAX_TEXT_TOKENS:]))
        if not rows:
            return out
        width = max(len(ids) for _, ids in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Right padding keeps every real token at the position it has alone, so a transcript's
        # answer does not depend on what it was batched with (equal within 1e-6).
        x = torch.tensor([ids + [pad] * (width - len(ids)) for _, ids in rows], device=self.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for _, ids in rows], device=self.device)
        last = torch.tensor([len(ids) - 1 for _, ids in rows], device=self.device)
        rows_at = torch.arange(len(rows), device=self.device)
        with self._lock, torch.inference_mode():
            logits = self.model(x, attention_mask=mask, use_cache=False).logits[rows_at, last]
            ends = torch.softmax(logits.float(), -1)
            p = ends[:, self.end_ids].sum(-1).tolist()
        for (i, _), q in zip(rows, p, strict=True):
            out[i] = float(q)
        return out


def load_text_turn_model() -> TextTurnModel:
    """The process-wide text end-of-turn model, loaded once."""
    with _model_lock:
        lazy = shared_lazy("text turn", ("text_turn", "smollm2"), TextTurnModel)
    return lazy.get()


class SmartTurnDetector:
    """Asks Smart Turn at ``check_ms`` of silence: complete → end now; incomplete → wait up to
    ``max_silence_ms``. A dangling transcript (``use_transcript``) waits like an incomplete turn.

    With ``confident`` set, a third tier: P(complete) between ``threshold`` and ``confident`` is
    "unsure" and ends after ``unsure_ms`` of silence (today's fixed wait), so only a confident
    model ends a turn early, and an unsure one does not hold it for the long limit.

    With ``text_model`` set and a transcript given, a transcript it scores below
    ``text_threshold`` waits ``text_wait_ms`` (None: ``max_silence_ms``) even when the audio
    sounds complete: both must say complete for the turn to end at the check. With a
    ``text_wait_ms`` shorter than the long limit, the other disagreement (the audio sounds
    unfinished, the text reads finished) waits ``text_wait_ms`` too; with ``text_sure`` set, a
    text scored at least that waits only ``unsure_ms`` there (Smart Turn misjudges some voices:
    espeak-ng's "Can I return these shoes?" scores 0.03).
    """

    name = "smart_turn"

    def __init__(self, model: SmartTurnModel, *, check_ms: int = 200, threshold: float = 0.5,
                 max_silence_ms: int = 4000, use_transcript: bool = True, confident: float | None = None,
                 unsure_ms: int = 500, text_model: TextTurnModel | None = None,
                 text_threshold: float = TEXT_THRESHOLD, text_wait_ms: int | None = None,
                 text_sure: float | None = None) -> None:
        self.model, self.check_ms, self.threshold = model, check_ms, threshold
        self.max_silence_ms, self.use_transcript = max_silence_ms, use_transcript
        self.confident, self.unsure_ms = confident, unsure_ms
        self.text_model, self.text_threshold = text_model, text_threshold
        self.text_wait_ms = text_wait_ms if text_wait_ms is not None else max_silence_ms
        self.text_sure = text_sure
        if text_model is not None:
            self.name = "smart_turn+lm"

    def decide(self, audio: np.ndarray, sample_rate: int, *, transcript: str | None = None) -> TurnVerdict:
        return self.verdict(self.audio_probability(audio, sample_rate), transcript)

    def audio_probability(self, audio: np.ndarray, sample_rate: int) -> float:
        """Smart Turn's P(complete) for the utterance so far (the part of :meth:`decide` that
        needs no transcript: a server runs it while the speculative transcript is computed)."""
        return self.model.probability(to_16k(audio, sample_rate))

    def needs_text(self, transcript: str | None) -> bool:
        """Whether :meth:`verdict` would ask the text model about ``transcript`` (a server asks
        it beforehand, batched with other sessions', and passes ``text_probability``)."""
        return (self.text_model is not None and transcript is not None
                and not (self.use_transcript and transcript_incomplete(transcript)))

    def verdict(self, p: float, transcript: str | None = None, text_probability: float | None = None) -> TurnVerdict:
        """The decision from Smart Turn's ``p`` and, where given, the transcript.
        ``text_probability``: the text model's answer for that transcript, if already asked."""

        def text_ends() -> float:
            assert self.text_model is not None and transcript is not None
            return text_probability if text_probability is not None else self.text_model.probability(transcript)

        if p < self.threshold:
            # The audio sounds unfinished. With a shorter text wait configured, a transcript that
            # reads finished waits only that long: the two disagree, and a complete question
            # Smart Turn misjudges ("What floor is the electronics section on?") is not held
            # for the long limit.
            if self.text_model is not None and transcript is not None \
                    and (self.text_wait_ms < self.max_silence_ms or self.text_sure is not None) \
                    and not (self.use_transcript and transcript_incomplete(transcript)):
                ends = text_ends()
                if self.text_sure is not None and ends >= self.text_sure:   # the text is sure: a short wait
                    return TurnVerdict(max(self.check_ms, self.unsure_ms), p, "audio_incomplete", ends)
                if ends >= self.text_threshold and self.text_wait_ms < self.max_silence_ms:
                    return TurnVerdict(self.text_wait_ms, p, "audio_incomplete", ends)
                return TurnVerdict(self.max_silence_ms, p, "incomplete", ends)
            return TurnVerdict(self.max_silence_ms, p, "incomplete")
        if self.use_transcript and transcript is not None and transcript_incomplete(transcript):
            return TurnVerdict(self.max_silence_ms, p, "transcript_incomplete")
        q = None
        if self.text_model is not None and transcript is not None:
            q = text_ends()
            if q < self.text_threshold:
                return TurnVerdict(self.text_wait_ms, p, "text_incomplete", q)
        if self.confident is not None and p < self.confident:
            return TurnVerdict(max(self.check_ms, self.unsure_ms), p, "unsure", q)
        return TurnVerdict(self.check_ms, p, "complete", q)


def to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono int16 or float audio at ``sample_rate`` → float32 at 16 kHz."""
    x = np.asarray(audio)
    if x.ndim != 1 or x.size == 0:
        raise InvalidAudioError(f"end-of-turn audio must be non-empty mono (n,), got shape {x.shape}")
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise InvalidAudioError(f"end-of-turn audio must be int16 or float, got {x.dtype}")
    if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 192_000:
        raise InvalidAudioError(f"sample rate must be an integer in [8000, 192000] Hz, got {sample_rate!r}")
    if sample_rate != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, sample_rate, SAMPLE_RATE).astype(np.float32)
    return x


def make_turn_detector(config: TurnConfig | None = None) -> EndOfTurnDetector:
    """The detector ``config`` names (the Smart Turn model is loaded once per process)."""
    config = config or TurnConfig()
    if config.mode == "silence":
        return SilenceDetector(config.silence_ms)
    threshold, limit = EAGERNESS[config.eagerness]
    return SmartTurnDetector(load_smart_turn(config.model_path, config.threads), check_ms=config.check_ms,
                             threshold=config.threshold if config.threshold is not None else threshold,
                             max_silence_ms=config.max_silence_ms or limit, use_transcript=config.use_transcript,
                             confident=config.confident, unsure_ms=config.unsure_ms,
                             text_model=load_text_turn_model() if config.text_model == "lm" else None,
                             text_threshold=config.text_threshold, text_wait_ms=config.text_wait_ms,
                             text_sure=config.text_sure)
