"""A short real training run: generated kiosk turns, real perception features, the real CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 generated turns (about 12 spoken), written once for this module."""
    import make_kiosk_turns

    out = tmp_path_factory.mktemp("kiosk")
    assert make_kiosk_turns.main(["--out", str(out), "--n", "120", "--spoken", "0.1", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for this module: media are encoded once."""
    return tmp_path_factory.mktemp("feature_cache")


def test_short_training_beats_chance(kiosk: Path, perception: object, cache_dir: Path) -> None:
    """Attention fusion trained for a few seconds on real features is far above chance on unseen templates."""
    from fusion.config import FusionConfig
    from fusion.evaluate import evaluate_table
    from fusion.features import FeatureCache, encode_manifest
    from fusion.manifest import load_manifest
    from fusion.train import TrainConfig, train_model

    cache = FeatureCache(cache_dir)
    tables = {s: encode_manifest(load_manifest(kiosk / f"{s}.jsonl", strict=True), perception,  # type: ignore[arg-type]
                                 cache=cache, strict=True) for s in ("train", "val", "test")}
    assert tables["train"].present[:, 1].any(), "some turns are spoken"
    cfg = FusionConfig(input_dims=tables["train"].dims, d_model=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains fastest on one thread
    try:
        model, info = train_model(cfg, tables["train"], tables["val"], TrainConfig(epochs=60, patience=20))
    finally:
        torch.set_num_threads(threads)
    m = evaluate_table(model, tables["test"])
    assert m["intent_acc"] > 3 / 9, m          # chance is 1/9
    assert m["addressee_acc"] > 0.6, m
    assert info["epochs_run"] >= 1


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """The CLI pins torch to one thread (its default); give the rest of the session its own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cli_train_and_eval(kiosk: Path, perception: object, cache_dir: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    """`mmagent train` writes a checkpoint with encoder identities; `mmagent eval` scores it."""
    import fusion.cli
    from fusion.checkpoint import load_checkpoint
    from server.cli import main

    monkeypatch.setattr(fusion.cli, "_perception", lambda: perception)  # share the loaded encoders
    ck = tmp_path / "m.pt"
    cache = str(cache_dir)
    assert main(["train", "--manifest", str(kiosk / "train.jsonl"), "--val", str(kiosk / "val.jsonl"),
                 "--out", str(ck), "--epochs", "5", "--d-model", "32", "--cache", cache]) == 0
    _, meta = load_checkpoint(ck)
    assert meta["encoders"] == perception.identities()  # type: ignore[attr-defined]
    assert meta["info"]["n_train"] > 0
    out_dir = tmp_path / "eval"
    assert main(["eval", "--manifest", str(kiosk / "test.jsonl"), "--checkpoint", str(ck), "--cache", cache,
                 "--out-dir", str(out_dir)]) == 0
    res = json.loads((out_dir / "eval.json").read_text())
    scores = next(iter(res["results"].values()))
    assert set(scores) == {"all", "text", "speech", "vision", "text+vision", "missing30"}
    assert 0 <= scores["all"]["intent_acc"]["mean"] <= 1
    assert "| intent acc |" in (out_dir / "eval.md").read_text()
    # a mismatched checkpoint is refused with a clear error code
    bad = torch.load(ck, weights_only=True)
    bad["encoders"]["text"] = "text:another-model:384"
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["eval", "--manifest", str(kiosk / "test.jsonl"), "--checkpoint", str(tmp_path / "bad.pt"),
                 "--cache", cache, "--out-dir", str(out_dir)]) == 1
