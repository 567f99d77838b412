"""The facade: lazy loading, identities and feature sizes, the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from perception import FACE_FEATURES, PROSODY_FEATURES, Perception, PerceptionConfig
from perception.runtime import Encoder, Lazy
from tests.conftest import REPO_ROOT, synth_speech


def test_nothing_loads_until_used() -> None:
    """Constructing the facade and asking for identities and sizes loads no model weights."""
    # Settings no other test uses, so no encoder is shared with one loaded earlier.
    p = Perception(PerceptionConfig(text_batch_size=13, speech_beam_size=2, top_k=4))
    assert p.identities() == {
        "text": "text:all-MiniLM-L6-v2:mean-l2:384",
        "speech": "speech:whisper-tiny.en:voiced-mean-fit:384",
        "vision": "vision:efficientnet-lite0:imagenet:1280",
    }
    assert p.feature_dims() == {"text": 384, "speech": 384 + PROSODY_FEATURES, "vision": 1280 + FACE_FEATURES}
    assert p.load_times() == {}


def test_feature_dims_match_vectors(perception: Perception) -> None:
    """feature_dims() is the true length of each modality's feature_vector(), after loading."""
    dims = perception.feature_dims()
    text = perception.encode_text(["hello"])[0].feature_vector()
    speech = perception.encode_speech(np.zeros(16000, np.float32), 16000).feature_vector()
    frame = perception.encode_frames([data.coffee()])[0].feature_vector()
    assert (text.shape[0], speech.shape[0], frame.shape[0]) == (dims["text"], dims["speech"], dims["vision"])
    assert {"text", "speech", "vision"} <= set(perception.warmup())
    assert perception._encoder_dims() == {"text": perception._text.get().dim,
                                          "speech": perception._speech.get().dim,
                                          "vision": perception._vision.get().dim}


def test_encoders_share_one_interface(perception: Perception) -> None:
    """Each modality's encoder has the same small interface: dim, identity, encode()."""
    perception.warmup()
    ids = perception.identities()
    for name, lazy in (("text", perception._text), ("speech", perception._speech), ("vision", perception._vision)):
        enc = lazy.get()
        assert isinstance(enc, Encoder)
        assert enc.identity == ids[name]


def test_equal_settings_share_models(perception: Perception) -> None:
    """A second facade with the same model settings reuses the loaded encoders."""
    perception.encode_text(["hello"])
    other = Perception(PerceptionConfig(numpy_channel_order="BGR"))  # input handling only
    assert other._text.get() is perception._text.get()
    assert other._vision is perception._vision and other._speech is perception._speech
    different = Perception(PerceptionConfig(top_k=2))
    assert different._vision is not perception._vision and different._text is perception._text


def test_lazy_builds_once_under_contention() -> None:
    """Many threads asking for a model at once build it exactly once."""
    calls: list[int] = []
    barrier = threading.Barrier(8)

    def build() -> object:
        calls.append(1)
        return object()

    lazy: Lazy[object] = Lazy("test", build)
    got: list[object] = []

    def worker() -> None:
        barrier.wait()
        got.append(lazy.get())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1
    assert lazy.load_seconds is not None


def test_cli_perceive(tmp_path: Path) -> None:
    """`mmagent perceive` prints JSON with labels, faces, transcript, text, load times and timings."""
    cat, face, wav = tmp_path / "cat.jpg", tmp_path / "astronaut.png", tmp_path / "question.wav"
    Image.fromarray(data.chelsea()).save(cat, quality=92)
    Image.fromarray(data.astronaut()).save(face)
    synth_speech("Where can I find the batteries?", out=wav)
    cmd = [sys.executable, "-m", "server.cli", "perceive", "--image", str(cat), "--image", str(face),
           "--audio", str(wav), "--text", "where is the milk?", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert 281 <= out["images"][0]["labels"][0]["index"] <= 285
    assert out["images"][1]["faces"]["count"] == 1
    assert "batteries" in out["speech"]["transcript"].lower()
    assert out["text"][0]["embedding_dim"] == 384
    assert set(out["load_times_s"]) == {"text", "speech", "vision"}
    assert {"load_models", "vision", "speech", "text", "read_audio"} <= set(out["timings_s"])
    assert out["identities"]["vision"].startswith("vision:efficientnet-lite0")

    bad = subprocess.run([sys.executable, "-m", "server.cli", "perceive", "--image", str(tmp_path / "none.jpg")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1 and "[invalid_image]" in bad.stderr and "not found" in bad.stderr


def test_docstring_examples_run() -> None:
    """The examples in the package and facade docstrings run and print what they claim."""
    import doctest

    import perception
    import perception.facade

    for module in (perception, perception.facade):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_all_modalities() -> None:
    """On CUDA (fp16 models, float16 CTranslate2) every encoder runs and keeps its accuracy."""
    p = Perception(PerceptionConfig(device="cuda"))
    text = p.encode_text(["where is the milk?", "where can I find milk?"])
    assert text[0].embedding.device.type == "cuda" and text[0].embedding.dtype == torch.float32
    frame = p.encode_frames([data.chelsea()])[0]
    assert frame.embedding.device.type == "cuda" and 281 <= frame.labels[0].index <= 285
    samples, sr = synth_speech("Where can I find the batteries?")
    speech = p.encode_speech(np.concatenate([np.zeros(8000, np.float32), samples]), sr)
    assert "batteries" in speech.transcript.lower() and speech.embedding.device.type == "cuda"
