"""Checkpoints and the predictor: round trip, corrupt files, mismatched encoders, input checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusion import CheckpointError, FusionConfig, FusionPredictor, ModalityInputs
from fusion.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from fusion.registry import VARIANTS, build_model
from perception.errors import InputError, ModelLoadError

DIMS = {"text": 8, "speech": 6, "vision": 10}
ENC = {"text": "text:tiny:8", "speech": "speech:tiny:6", "vision": "vision:tiny:10"}


def _turns(seed: int = 0) -> list[ModalityInputs]:
    g = torch.Generator().manual_seed(seed)
    return [
        ModalityInputs(text=torch.randn(8, generator=g), speech=torch.randn(6, generator=g),
                       vision=torch.randn(10, generator=g)),
        ModalityInputs(text=torch.randn(8, generator=g)),
        ModalityInputs(vision=torch.randn(3, 10, generator=g)),  # several frames: averaged
        ModalityInputs(context=torch.randn(16, generator=g)),   # none but context
        ModalityInputs(),
    ]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_round_trip_identical_outputs(tmp_path: Path, variant: str) -> None:
    """A saved and reloaded checkpoint gives bit-identical predictions."""
    torch.manual_seed(0)
    model = build_model(FusionConfig(variant=variant, input_dims=DIMS, d_model=16, n_heads=2)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, encoders=ENC, feature_dims=DIMS, info={"note": "test"})
    before = FusionPredictor(model, {"encoders": ENC}).predict(_turns())
    fp = FusionPredictor.load(path, encoders=ENC)
    after = fp.predict(_turns())
    for a, b in zip(before, after, strict=True):
        assert a.to_json() == b.to_json()
        assert torch.equal(a.fused, b.fused)
    assert fp.info == {"note": "test"}


def test_fused_turn_contents(tmp_path: Path) -> None:
    """FusedTurn carries the label set, probabilities, and weights over present modalities only."""
    model = build_model(FusionConfig(input_dims=DIMS, d_model=16, n_heads=2)).eval()
    fp = FusionPredictor(model, {"encoders": ENC})
    full, text_only, frames, ctx, empty = fp.predict(_turns())
    assert set(full.modality_weights) == {"text", "speech", "vision"}
    assert set(text_only.modality_weights) == {"text"} and text_only.modality_weights["text"] == pytest.approx(1)
    assert set(frames.modality_weights) == {"vision"}
    assert set(ctx.modality_weights) == {"context"}
    assert empty.modality_weights == {}
    assert abs(sum(full.modality_weights.values()) - 1) < 1e-5
    assert abs(sum(full.intent_probs.values()) - 1) < 1e-5 and full.intent in full.intent_probs
    assert full.emotion in ("negative", "neutral", "positive")
    assert full.fused.shape == (16,)
    nxt = fp.predict([ModalityInputs(text=torch.randn(8), context=full.fused)])[0]
    assert set(nxt.modality_weights) == {"text", "context"}
    j = full.to_json()
    assert set(j) >= {"intent", "intent_confidence", "emotion", "addressee", "addressee_prob", "modality_weights"}


def test_wrong_input_shape_is_input_error() -> None:
    """A feature vector of the wrong size raises InputError naming the modality and size."""
    fp = FusionPredictor(build_model(FusionConfig(input_dims=DIMS, d_model=16, n_heads=2)), {})
    with pytest.raises(InputError, match=r"'text'.*expects \(8,\)"):
        fp.predict([ModalityInputs(text=torch.zeros(384))])
    with pytest.raises(InputError, match="NaN"):
        fp.predict([ModalityInputs(speech=torch.full((6,), float("nan")))])


def test_mismatched_encoders(tmp_path: Path) -> None:
    """Loading against other encoders raises CheckpointError naming each difference."""
    model = build_model(FusionConfig(input_dims=DIMS, d_model=16, n_heads=2))
    path = save_checkpoint(tmp_path / "m.pt", model, encoders=ENC, feature_dims=DIMS)
    other = dict(ENC, vision="vision:clip-vit-b32:512")
    with pytest.raises(CheckpointError, match="vision: checkpoint trained with 'vision:tiny:10'") as ei:
        FusionPredictor.load(path, encoders=other)
    assert isinstance(ei.value, ModelLoadError) and ei.value.code == "checkpoint_mismatch"
    fp = FusionPredictor.load(path)
    with pytest.raises(CheckpointError, match="text: feature size 8 in checkpoint, 16 from perception"):
        fp.check_encoders(ENC, dict(DIMS, text=16))
    fp.check_encoders(ENC, DIMS)


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    """Missing, truncated, foreign and inconsistent checkpoint files give clear CheckpointErrors."""
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    model = build_model(FusionConfig(input_dims=DIMS, d_model=16, n_heads=2))
    good = save_checkpoint(tmp_path / "m.pt", model, encoders=ENC, feature_dims=DIMS)
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a fusion checkpoint"):
        load_checkpoint(foreign)
    ck = torch.load(good, weights_only=True)
    ck["config"]["d_model"] = 32
    torch.save(ck, tmp_path / "incons.pt")
    with pytest.raises(CheckpointError, match="do not match the stored config"):
        load_checkpoint(tmp_path / "incons.pt")


def test_default_checkpoint_loads_and_is_small() -> None:
    """The committed demo checkpoint loads, has the fixed label set and stays small."""
    assert DEFAULT_CHECKPOINT.stat().st_size < 3 * 1024 * 1024
    fp = FusionPredictor.load(None)
    assert fp.config.intents[:3] == ("greeting", "goodbye", "return_item")
    assert set(fp.encoders) == {"text", "speech", "vision"}
    dims = fp.input_dims
    out = fp.predict([ModalityInputs(text=torch.zeros(dims["text"]), vision=torch.zeros(dims["vision"])),
                      ModalityInputs(context=torch.zeros(fp.d_model))])
    assert set(out[0].modality_weights) == {"text", "vision"}
    assert out[1].intent in fp.config.intents


def test_docstring_examples_run() -> None:
    """The usage examples in the fusion package's docstrings run as written."""
    import doctest

    import fusion
    import fusion.predictor

    for mod in (fusion, fusion.predictor):
        res = doctest.testmod(mod, extraglobs={"torch": torch})
        assert res.failed == 0 and res.attempted > 0, mod.__name__
