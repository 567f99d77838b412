"""bench/fusion_ceiling.py: the oracle's rules on a tiny hand-written manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "bench") not in sys.path:
    sys.path.append(str(REPO / "bench"))

import fusion_ceiling as fc  # noqa: E402

from fusion.model import modality_dropout  # noqa: E402


def _row(id: str, intent: str, *, text: str | None = None, audio: bool = False, kind: str | None = None,
         ambiguous: bool = False) -> dict[str, Any]:
    r: dict[str, Any] = {"id": id}
    if audio:
        r["audio"] = f"audio/{id}.wav"
    elif text:
        r["text"] = text
    if kind is not None:
        r["image"] = f"images/{id}.jpg"
    r.update({"intent": intent, "kind": kind, "ambiguous": ambiguous, "spoken_text": text if audio else None})
    return r


# Train: ambiguous wordings are mostly find_product; a receipt is shown mostly with greetings
# (so the Bayes guess for an image-only receipt differs from KIND_INTENT["receipt"]).
TRAIN = [
    _row("t0", "find_product", text="What about this one?", kind="product_box", ambiguous=True),
    _row("t1", "find_product", text="Is this okay?", kind="store_map", ambiguous=True),
    _row("t2", "return_item", text="Is this okay?", kind="receipt", ambiguous=True),
    _row("t3", "greeting", text="Hello.", kind="receipt"),
    _row("t4", "greeting", text="Hi!", kind="receipt"),
    _row("t5", "greeting", text="Hey.", kind="receipt"),
    _row("t6", "price_check", text="How much is tea?", kind="price_tag"),
]


@pytest.fixture()
def priors(tmp_path: Path) -> fc.Priors:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    return fc.fit_priors(fc.load_rows(path))


def test_priors_are_the_train_map_choices(priors: fc.Priors) -> None:
    assert priors.ambiguous_guess == "find_product"
    assert priors.kind_guess["receipt"] == "greeting"  # 3 greetings vs 1 return_item
    assert priors.kind_guess["price_tag"] == "price_check"


def test_presence_and_turn_type() -> None:
    typed = _row("a", "greeting", text="Hi", kind="empty")
    spoken = _row("b", "price_check", text="How much?", audio=True, kind="price_tag", ambiguous=True)
    silent = _row("c", "return_item", kind="receipt")
    assert fc.presence(typed) == (True, False, True)
    assert fc.presence(spoken) == (True, True, True)
    assert fc.presence(silent) == (False, False, True)
    assert [fc.turn_type(r) for r in (typed, spoken, silent)] == ["plain typed", "ambiguous spoken", "silent"]


def test_oracle_rules(priors: fc.Priors) -> None:
    plain = _row("p", "price_check", text="What does rice cost?", kind="receipt")
    assert fc.oracle_intent(plain, (True, False, False), priors) == "price_check"  # text kept: right
    assert fc.oracle_intent(plain, (True, False, True), priors) == "price_check"
    assert fc.oracle_intent(plain, (False, False, True), priors) == "greeting"  # image only: Bayes guess

    amb = _row("a", "return_item", text="Is this okay?", kind="receipt", ambiguous=True)
    assert fc.oracle_intent(amb, (True, False, True), priors) == "return_item"  # the image decides
    assert fc.oracle_intent(amb, (True, False, False), priors) == "find_product"  # image dropped: wrong
    amb_fp = _row("b", "find_product", text="Is this okay?", kind="store_map", ambiguous=True)
    assert fc.oracle_intent(amb_fp, (True, False, False), priors) == "find_product"  # ...unless it is the MAP

    spoken = _row("s", "talk_to_human", text="Get me a person.", audio=True, kind="empty")
    assert fc.oracle_intent(spoken, (False, True, False), priors) == "talk_to_human"  # speech carries wording

    silent = _row("z", "return_item", kind="receipt")
    assert fc.oracle_intent(silent, (False, False, True), priors) == "return_item"  # KIND_INTENT, not greeting
    assert fc.oracle_intent(plain, (False, False, False), priors) is None


def test_drop_masks_follow_evaluate(tmp_path: Path) -> None:
    rows = [_row(f"r{i}", "greeting", text="Hi", audio=i % 2 == 0, kind="empty" if i % 3 else None)
            for i in range(40)] + [_row("s", "other", kind="empty")]
    present = torch.tensor([fc.presence(r) for r in rows])
    for seed in (0, 1, 2):
        got = torch.tensor(fc.drop_masks(rows, seed))
        with torch.random.fork_rng():
            torch.manual_seed(10_000 + seed)
            want = modality_dropout(present, 0.3)
        assert torch.equal(got, want)
        assert bool(got.any(1).all()) and not bool((got & ~present).any())


def test_analyse_on_a_tiny_split(priors: fc.Priors) -> None:
    rows = [_row("p", "price_check", text="What does rice cost?", kind="receipt"),
            _row("a", "return_item", text="Is this okay?", kind="receipt", ambiguous=True),
            _row("s", "talk_to_human", text="Get me a person.", audio=True, kind="empty"),
            _row("z", "return_item", kind="receipt"),
            _row("n", "goodbye", text="Bye.")]
    r = fc.analyse(rows, priors)
    assert r["complete"] == 1.0
    assert r["groups"]["silent"]["loss_points"] == 0.0
    assert r["groups"]["plain typed"]["n"] == 2
    assert sum(g["loss_points"] for g in r["groups"].values()) == pytest.approx(r["loss_points"])
    assert 0.0 <= r["missing30"]["mean"] <= 1.0


def test_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fc.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o.json")]) == 2
    assert "make_kiosk_turns.py" in capsys.readouterr().err
