"""The best intent accuracy any model can reach on the kiosk benchmark, complete and under ``missing30``.

    python bench/fusion_ceiling.py [--data var/kiosk] [--out artifacts/fusion_ceiling.json]

An *oracle* that knows the generator's rules (bench/make_kiosk_turns.py) and sees the true content
of every modality that is present -- the wording when text or speech is present (a perfect
transcript), the image kind when vision is present -- but never the label:

- wording present and not ambiguous -> the intent (the wording fixes it);
- ambiguous wording with vision -> ``KIND_INTENT[kind]``;
- ambiguous wording without vision -> the most frequent intent among ambiguous train turns;
- vision only: a silent turn (no text, no audio in the manifest) -> ``KIND_INTENT[kind]``;
  otherwise the most frequent intent given the kind among train turns with an image, i.e. the
  Bayes choice given only the kind (P(intent | kind) estimated on the train split).

Silent turns get their intent from the kind even under missing30, where a model seeing only an
image cannot tell a silent turn from one whose wording was dropped; so the numbers are an upper
bound (on this data the two rules agree for every kind, see ``silent_kind_disagreements``).

``missing30`` is reproduced exactly as ``fusion.evaluate.subset_mask`` draws it (the same function,
torch seed 10_000 + seed, seeds 0, 1, 2), on the presence mask from the manifest keys (text when
"text" or "audio" is non-empty, speech when "audio", vision when "image"). The real feature table
marks text absent when an audio's transcript is empty; such rows (if any) may get a different
rescue draw. Writes a markdown table to stdout and JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
# The repo root must come before bench/ (bench/fusion.py would shadow the fusion package).
if str(REPO) in sys.path:
    sys.path.remove(str(REPO))
sys.path.insert(0, str(REPO))
if str(REPO / "bench") not in sys.path:
    sys.path.append(str(REPO / "bench"))

from make_kiosk_turns import KIND_INTENT  # noqa: E402

from fusion.evaluate import subset_mask  # noqa: E402
from fusion.features import FeatureTable  # noqa: E402

SEEDS = (0, 1, 2)
GROUPS = ("ambiguous typed", "ambiguous spoken", "plain typed", "plain spoken", "silent")
Mask = tuple[bool, bool, bool]  # text, speech, vision (MEDIA_MODALITIES order)


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Parsed manifest rows (with the generator's metadata keys)."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def presence(row: dict[str, Any]) -> Mask:
    """Which media modalities a row has, from its manifest keys."""
    return (bool(row.get("text") or row.get("audio")), bool(row.get("audio")), bool(row.get("image")))


def is_silent(row: dict[str, Any]) -> bool:
    return not row.get("text") and not row.get("audio")


def turn_type(row: dict[str, Any]) -> str:
    """One of ``GROUPS``."""
    if is_silent(row):
        return "silent"
    how = "spoken" if row.get("audio") else "typed"
    return f"{'ambiguous' if row.get('ambiguous') else 'plain'} {how}"


def _most_frequent(c: Counter[str]) -> str:
    """The most frequent key; ties broken by name, so the choice is deterministic."""
    return min(c, key=lambda k: (-c[k], k))


@dataclass(frozen=True)
class Priors:
    """What the oracle learns from the train split (never from the split it is scored on)."""

    ambiguous_guess: str          # MAP intent of an ambiguous wording without the image
    kind_guess: dict[str, str]    # MAP intent given only the image kind
    ambiguous_counts: dict[str, int]
    kind_counts: dict[str, dict[str, int]]


def fit_priors(train: list[dict[str, Any]]) -> Priors:
    amb = Counter(r["intent"] for r in train if r.get("ambiguous") and not is_silent(r))
    by_kind: dict[str, Counter[str]] = {}
    for r in train:
        if r.get("image") and r.get("kind") is not None:
            by_kind.setdefault(r["kind"], Counter())[r["intent"]] += 1
    if not amb:
        raise ValueError("no ambiguous turns in the train split")
    return Priors(ambiguous_guess=_most_frequent(amb),
                  kind_guess={k: _most_frequent(c) for k, c in sorted(by_kind.items())},
                  ambiguous_counts=dict(sorted(amb.items())),
                  kind_counts={k: dict(sorted(c.items())) for k, c in sorted(by_kind.items())})


def oracle_intent(row: dict[str, Any], kept: Mask, priors: Priors) -> str | None:
    """The oracle's intent for ``row`` when only the modalities in ``kept`` are present."""
    wording, vision = kept[0] or kept[1], kept[2]
    kind = row.get("kind")
    if wording and not is_silent(row):
        if not row.get("ambiguous"):
            return str(row["intent"])  # the wording fixes the intent (the oracle reads the template)
        if vision and kind is not None:
            return KIND_INTENT[kind]
        return priors.ambiguous_guess
    if vision and kind is not None:
        if is_silent(row):
            return KIND_INTENT[kind]
        return priors.kind_guess.get(kind, KIND_INTENT[kind])
    return None  # nothing present: not scored (cannot happen under missing30)


def drop_masks(rows: list[dict[str, Any]], seed: int) -> list[Mask]:
    """The ``missing30`` pattern of ``fusion.evaluate`` for one seed, on the manifest's presence."""
    n = len(rows)
    present = torch.tensor([presence(r) for r in rows], dtype=torch.bool).reshape(n, 3)
    table = FeatureTable(ids=[str(r.get("id")) for r in rows], feats={}, present=present,
                         intent=torch.zeros(n, dtype=torch.long), emotion=torch.zeros(n, dtype=torch.long),
                         addressee=torch.zeros(n), dims={}, encoders={})
    mask = subset_mask(table, "missing30", seed)
    return [(bool(a), bool(b), bool(c)) for a, b, c in mask.tolist()]


def score(rows: list[dict[str, Any]], masks: list[Mask], priors: Priors) -> dict[str, Any]:
    """Accuracy over the scored rows (at least one modality kept) and correct counts per group."""
    correct: Counter[str] = Counter()
    n = 0
    for row, kept in zip(rows, masks, strict=True):
        guess = oracle_intent(row, kept, priors)
        if guess is None:
            continue
        n += 1
        correct[turn_type(row)] += guess == row["intent"]
    return {"acc": sum(correct.values()) / n if n else float("nan"), "n": n,
            "correct": {g: correct[g] for g in GROUPS}}


def analyse(rows: list[dict[str, Any]], priors: Priors, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    """Oracle on complete input and under missing30 (each seed), loss in points, per-group breakdown."""
    n = len(rows)
    sizes = Counter(turn_type(r) for r in rows)
    complete = score(rows, [presence(r) for r in rows], priors)
    runs = [score(rows, drop_masks(rows, s), priors) for s in seeds]
    accs = [r["acc"] for r in runs]
    mean = statistics.fmean(accs)
    groups = {}
    for g in GROUPS:
        lost = [complete["correct"][g] - r["correct"][g] for r in runs]
        groups[g] = {"n": sizes[g], "share": sizes[g] / n,
                     "acc_complete": complete["correct"][g] / sizes[g] if sizes[g] else float("nan"),
                     "acc_missing30": (statistics.fmean(r["correct"][g] for r in runs) / sizes[g]
                                       if sizes[g] else float("nan")),
                     "loss_points": 100 * statistics.fmean(lost) / n}
    return {"n": n, "complete": complete["acc"],
            "missing30": {"mean": mean, "std": statistics.pstdev(accs), "values": accs, "seeds": list(seeds)},
            "loss_points": 100 * (complete["acc"] - mean), "groups": groups}


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| split | n | oracle complete | oracle missing30 | loss (points) |", "|---|---:|---:|---:|---:|"]
    for split, r in results.items():
        m = r["missing30"]
        lines.append(f"| {split} | {r['n']} | {100 * r['complete']:.1f} | {100 * m['mean']:.1f} ± "
                     f"{100 * m['std']:.1f} | {r['loss_points']:.1f} |")
    lines += ["", "| split | turn type | share of turns | oracle acc complete | oracle acc missing30 "
              "| contribution to the loss (points) |", "|---|---|---:|---:|---:|---:|"]
    for split, r in results.items():
        for g, s in r["groups"].items():
            lines.append(f"| {split} | {g} | {100 * s['share']:.1f} % ({s['n']}) | {100 * s['acc_complete']:.1f} "
                         f"| {100 * s['acc_missing30']:.1f} | {s['loss_points']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("var/kiosk"))
    ap.add_argument("--out", type=Path, default=Path("artifacts/fusion_ceiling.json"))
    args = ap.parse_args(argv)
    paths = {s: args.data / f"{s}.jsonl" for s in ("train", "val", "test")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        print(f"missing {', '.join(missing)}; generate the benchmark first:\n"
              f"    python bench/make_kiosk_turns.py --out {args.data} --n 2000", file=sys.stderr)
        return 2
    priors = fit_priors(load_rows(paths["train"]))
    results = {s: analyse(load_rows(paths[s]), priors) for s in ("test", "val")}
    silent_disagree = sorted(k for k, g in priors.kind_guess.items() if g != KIND_INTENT.get(k))
    print(markdown(results))
    print(f"\nambiguous wording without image -> {priors.ambiguous_guess}; "
          f"image only -> {priors.kind_guess}")
    if silent_disagree:
        print(f"kinds where the Bayes guess differs from KIND_INTENT (silent turns): {silent_disagree}")
    out = {"data": str(args.data), "protocol": "missing30: fusion.evaluate.subset_mask, seeds 0-2",
           "priors": {"ambiguous_guess": priors.ambiguous_guess, "kind_guess": priors.kind_guess,
                      "ambiguous_counts": priors.ambiguous_counts, "kind_counts": priors.kind_counts},
           "silent_kind_disagreements": silent_disagree, "splits": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
