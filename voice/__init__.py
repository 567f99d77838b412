"""Voice output: Piper text to speech, run with onnxruntime, phonemes from espeak-ng.

A bottom-layer package (it imports only perception's error roots): text in, PCM16 out.

>>> from voice import Synthesizer, VoiceConfig
>>> tts = Synthesizer(VoiceConfig(output_rate=16000))
>>> audio, chunks = tts.synthesize("The batteries are in aisle 7.")
>>> audio.dtype, chunks[0].sample_rate
(dtype('int16'), 16000)

Modules: ``text`` (clause splitting, numbers/prices/times in words), ``phonemes`` (espeak-ng as a
separate program), ``piper`` (the ONNX voice), ``synthesizer`` (streams, scheduling, resampling).
"""

from .config import DEFAULT_OUTPUT_RATE, OUTPUT_RATES, VoiceConfig
from .errors import InvalidVoiceError, PhonemizerError, UnsupportedRateError, VoiceNotFoundError
from .piper import PiperVoice, VoiceInfo
from .synthesizer import AudioChunk, SpeechStream, Synthesizer
from .text import Clause, ClauseSplitter, normalize, split_clauses

__all__ = [
    "DEFAULT_OUTPUT_RATE",
    "OUTPUT_RATES",
    "AudioChunk",
    "Clause",
    "ClauseSplitter",
    "InvalidVoiceError",
    "PhonemizerError",
    "PiperVoice",
    "SpeechStream",
    "Synthesizer",
    "UnsupportedRateError",
    "VoiceConfig",
    "VoiceInfo",
    "VoiceNotFoundError",
    "normalize",
    "split_clauses",
]
