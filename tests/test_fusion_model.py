"""Fusion model code on tiny dimensions: shapes, masking, weights, losses, a tiny training run."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fusion.config import FusionConfig
from fusion.losses import LossWeights, fusion_loss, info_nce, masked_ce
from fusion.model import modality_dropout
from fusion.registry import VARIANTS, build_model
from perception.errors import ConfigError

DIMS = {"text": 8, "speech": 6, "vision": 10}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and a shared CPU punishes spinning OpenMP threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
MODS = ("text", "speech", "vision", "context")
SUBSETS = [s for r in range(len(MODS) + 1) for s in itertools.combinations(MODS, r)]


def tiny(variant: str, **kw: object) -> FusionConfig:
    return FusionConfig(variant=variant, input_dims=dict(DIMS), d_model=16, n_heads=2, **kw)  # type: ignore[arg-type]


def inputs(B: int, d_model: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(B, d, generator=g) for m, d in DIMS.items()}
    x["context"] = torch.randn(B, d_model, generator=g)
    return x


def mask(subset: tuple[str, ...], B: int) -> torch.Tensor:
    return torch.tensor([[m in subset for m in MODS]] * B)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_for_every_modality_subset(variant: str) -> None:
    """Every variant gives documented shapes for every subset of modalities, none-but-context included."""
    model = build_model(tiny(variant)).eval()
    B = 3
    for subset in SUBSETS:
        out = model(inputs(B), mask(subset, B))
        assert out.fused.shape == (B, 16)
        assert out.weights.shape == (B, 4)
        assert out.intent_logits.shape == (B, 9)
        assert out.emotion_logits.shape == (B, 3)
        assert out.addressee_logits.shape == (B,)
        assert out.tokens.shape == (B, 4, 16)
        assert torch.isfinite(out.intent_logits).all() and torch.isfinite(out.fused).all()
        used = out.present[0]
        assert (out.weights[:, ~used] == 0).all(), (variant, subset)
        if used.any():
            torch.testing.assert_close(out.weights.sum(1), torch.ones(B))
        else:
            assert (out.weights == 0).all()


@pytest.mark.parametrize("variant", ["attention", "weighted_sum", "concat_mlp", "late_fusion"])
def test_weights_sum_to_one_over_present(variant: str) -> None:
    """Fusion variants' modality weights are a distribution over exactly the present modalities."""
    model = build_model(tiny(variant)).eval()
    present = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    out = model(inputs(4), present)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(4))
    assert ((out.weights > 0) == present).all()


def masked_value_pairs(model: torch.nn.Module) -> list[tuple[str, Any, Any]]:
    """For each modality: outputs on two inputs that differ only in that (masked-out) modality,
    after asserting the fused vector, weights and head logits are identical."""
    pairs = []
    for absent in MODS:
        subset = tuple(m for m in MODS if m != absent)
        a = inputs(4, seed=1)
        b = {k: v.clone() for k, v in a.items()}
        b[absent] = torch.randn_like(b[absent]) * 100
        oa, ob = model(a, mask(subset, 4)), model(b, mask(subset, 4))
        for f in ("fused", "weights", "intent_logits", "emotion_logits", "addressee_logits"):
            torch.testing.assert_close(getattr(oa, f), getattr(ob, f), msg=f"{absent} {f}")
        pairs.append((absent, oa, ob))
    return pairs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_masked_modality_does_not_change_output(variant: str) -> None:
    """Changing the values of a masked-out modality leaves every output unchanged."""
    model = build_model(tiny(variant)).eval()
    masked_value_pairs(model)
    # and a present modality does matter (for the variants that use it)
    a = inputs(4, seed=1)
    b = {k: v.clone() for k, v in a.items()}
    used = "text" if variant in ("unimodal_text", "attention", "weighted_sum") else None
    if used:
        b[used] = torch.randn_like(b[used])
        assert not torch.allclose(model(a, mask(MODS, 4)).intent_logits, model(b, mask(MODS, 4)).intent_logits)


def test_missing_key_is_absent() -> None:
    """A modality missing from the input dict counts as absent."""
    model = build_model(tiny("attention")).eval()
    x = inputs(2)
    del x["speech"]
    out = model(x, mask(MODS, 2))
    assert not out.present[:, 1].any()
    assert (out.weights[:, 1] == 0).all()


def test_modality_dropout_keeps_one_present() -> None:
    """Modality dropout never empties a row that had a modality, and never invents one."""
    torch.manual_seed(0)
    present = torch.rand(500, 4) < 0.6
    kept = modality_dropout(present, 0.9)
    assert not (kept & ~present).any()
    assert ((kept.sum(1) > 0) == (present.sum(1) > 0)).all()
    assert kept.sum() < present.sum()


def test_dropout_only_in_training() -> None:
    """Eval mode is deterministic; training mode drops modalities."""
    model = build_model(tiny("attention", modality_dropout=0.5))
    x, p = inputs(64), mask(MODS, 64)
    model.train()
    assert model(x, p).present.sum() < p.sum()
    model.eval()
    torch.testing.assert_close(model(x, p).fused, model(x, p).fused)


def test_config_validation() -> None:
    """Bad configuration values raise ConfigError naming the problem."""
    with pytest.raises(ConfigError, match="unknown fusion variant"):
        FusionConfig(variant="nope")
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        FusionConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="input_dims"):
        FusionConfig(input_dims={"smell": 3})
    with pytest.raises(ConfigError, match="modality_dropout"):
        FusionConfig(modality_dropout=1.5)
    assert FusionConfig.from_dict(FusionConfig().to_dict()) == FusionConfig()


def test_masked_losses() -> None:
    """Missing labels (-1) contribute nothing; all missing gives zero loss."""
    logits = torch.randn(4, 9)
    full = masked_ce(logits, torch.tensor([1, 2, 3, 4]))
    part = masked_ce(logits, torch.tensor([1, -1, -1, -1]))
    torch.testing.assert_close(part, torch.nn.functional.cross_entropy(logits[:1], torch.tensor([1])))
    assert masked_ce(logits, torch.full((4,), -1)) == 0
    assert full > 0
    model = build_model(tiny("attention")).eval()
    out = model(inputs(4), mask(MODS, 4))
    labels = {"intent": torch.full((4,), -1), "emotion": torch.full((4,), -1), "addressee": torch.full((4,), -1.0)}
    total, parts = fusion_loss(out, labels, LossWeights(align=0.0), model.logit_scale, model.modalities)
    assert float(total.detach()) == 0.0 and parts["intent"] == 0.0


def test_info_nce_prefers_aligned_pairs() -> None:
    """InfoNCE is low when modalities of the same turn agree, high when they are shuffled."""
    z = torch.randn(16, 1, 8)
    aligned = torch.cat([z, z, torch.randn(16, 2, 8)], dim=1)
    shuffled = torch.cat([z, z[torch.randperm(16)], torch.randn(16, 2, 8)], dim=1)
    present = torch.tensor([[True, True, False, False]] * 16)
    scale = torch.tensor(2.0)
    assert info_nce(aligned, present, scale, MODS) < info_nce(shuffled, present, scale, MODS)
    # context is never aligned, and a single co-present row gives no pair
    only_ctx = torch.tensor([[True, False, False, True]] * 16)
    assert info_nce(aligned, only_ctx, scale, MODS) == 0


def test_attention_learns_complementary_toy_task() -> None:
    """A tiny attention model learns a task that needs text AND vision (XOR-like), from scratch."""
    from fusion.features import FeatureTable
    from fusion.train import TrainConfig, train_model

    g = torch.Generator().manual_seed(0)
    N = 500
    a = torch.randint(0, 3, (N,), generator=g)  # what the text says
    b = torch.randint(0, 3, (N,), generator=g)  # what the camera shows
    intent = (a * 3 + b) % 9
    protos = {m: torch.randn(3, d, generator=g) * 2 for m, d in DIMS.items()}
    feats = {"text": protos["text"][a] + 0.3 * torch.randn(N, 8, generator=g),
             "speech": torch.randn(N, 6, generator=g),
             "vision": protos["vision"][b] + 0.3 * torch.randn(N, 10, generator=g)}
    table = FeatureTable(ids=[str(i) for i in range(N)], feats=feats, present=torch.ones(N, 3, dtype=torch.bool),
                         intent=intent, emotion=a % 3, addressee=(b > 0).float(), dims=dict(DIMS), encoders={})
    tr, va = table.subset(list(range(400))), table.subset(list(range(400, N)))
    cfg = FusionConfig(input_dims=dict(DIMS), d_model=32, n_heads=2, modality_dropout=0.1)
    model, _ = train_model(cfg, tr, va, TrainConfig(epochs=30, patience=30, lr=3e-3))
    from fusion.evaluate import evaluate_table

    m = evaluate_table(model, va)
    assert m["intent_acc"] > 0.9, m
    assert evaluate_table(model, va, "text")["intent_acc"] < 0.5  # text alone cannot do it


def test_consistency_loss_and_two_view_training() -> None:
    """The self-distillation loss is zero for identical views, positive otherwise, and a two-view
    training step with it runs and keeps modality dropout off in the full view."""
    from fusion.features import FeatureTable
    from fusion.losses import consistency_loss
    from fusion.train import TrainConfig, train_model

    model = build_model(tiny("attention", modality_dropout=0.5)).eval()
    x, p = inputs(8), mask(MODS, 8)
    full = model(x, p)
    assert abs(float(consistency_loss(full, full).detach())) < 1e-6
    assert float(consistency_loss(full, model(x, mask(("text",), 8))).detach()) > 0
    model.train()
    assert model(x, p, drop_modalities=False).present.equal(p)
    g = torch.Generator().manual_seed(0)
    N = 64
    feats = {m: torch.randn(N, d, generator=g) for m, d in DIMS.items()}
    table = FeatureTable(ids=[str(i) for i in range(N)], feats=feats, present=torch.ones(N, 3, dtype=torch.bool),
                         intent=torch.randint(0, 9, (N,), generator=g), emotion=torch.randint(0, 3, (N,), generator=g),
                         addressee=torch.ones(N), dims=dict(DIMS), encoders={})
    tc = TrainConfig(epochs=2, patience=2, loss=LossWeights(consistency=1.0, label_smoothing=0.1))
    _, info = train_model(tiny("attention"), table, table, tc)
    assert info["epochs_run"] == 2 and "consistency" in info["history"][0]


@pytest.mark.parametrize("late", [False, True])
def test_modality_heads_and_late_logits(late: bool) -> None:
    """Per-modality token heads (and, with ``late_logits``, their attention-weighted votes added to
    the logits): documented shapes, weights a distribution over present modalities, masked values
    never reach any output, the auxiliary unimodal loss trains, old configs load with both off."""
    model = build_model(tiny("attention", modality_heads=True, late_logits=late)).eval()
    B = 3
    for subset in SUBSETS:
        out = model(inputs(B), mask(subset, B))
        assert out.modality_logits is not None
        li, le, la = out.modality_logits
        assert li.shape == (B, 4, 9) and le.shape == (B, 4, 3) and la.shape == (B, 4)
        assert out.intent_logits.shape == (B, 9) and torch.isfinite(out.intent_logits).all()
        if out.present[0].any():
            torch.testing.assert_close(out.weights.sum(1), torch.ones(B))
        else:
            assert (out.weights == 0).all()
    for absent, oa, ob in masked_value_pairs(model):
        assert oa.modality_logits is not None and ob.modality_logits is not None
        keep = torch.tensor([m != absent for m in MODS])
        for k in range(3):  # present tokens' own logits do not see the masked one either
            torch.testing.assert_close(oa.modality_logits[k][:, keep], ob.modality_logits[k][:, keep])
    # the unimodal auxiliary loss: present in the parts, finite, differentiable
    model.train()
    labels = {"intent": torch.tensor([0, 1, -1]), "emotion": torch.tensor([2, -1, 0]),
              "addressee": torch.tensor([1.0, 0.0, -1.0])}
    out = model(inputs(B), mask(("text", "vision"), B), drop_modalities=False)
    total, parts = fusion_loss(out, labels, LossWeights(unimodal=0.5), model.logit_scale, MODS)
    assert "unimodal" in parts and parts["unimodal"] > 0
    total.backward()
    assert model.tok_heads is not None and model.tok_heads["text"].intent.weight.grad is not None
    # baselines have no per-modality heads: the auxiliary weight is a no-op for them
    base = build_model(tiny("weighted_sum"))
    _, bparts = fusion_loss(base(inputs(B), mask(MODS, B)), labels, LossWeights(unimodal=0.5), base.logit_scale, MODS)
    assert "unimodal" not in bparts
    old = {k: v for k, v in tiny("attention").to_dict().items() if k not in ("modality_heads", "late_logits")}
    cfg = FusionConfig.from_dict(old)
    assert not cfg.modality_heads and not cfg.late_logits


@pytest.mark.parametrize("pool_skip", [False, True])
def test_global_skip(pool_skip: bool) -> None:
    """The weighted sum's path inside the attention core (``global_skip``): documented shapes for
    every subset, masked values never reach any output, weights stay a distribution over present
    modalities, the path's scalars get gradients, old configs load with it off."""
    model = build_model(tiny("attention", global_skip=True, pool_skip=pool_skip)).eval()
    B = 3
    for subset in SUBSETS:
        out = model(inputs(B), mask(subset, B))
        assert out.fused.shape == (B, 16) and out.intent_logits.shape == (B, 9)
        assert torch.isfinite(out.fused).all() and torch.isfinite(out.intent_logits).all()
        if out.present[0].any():
            torch.testing.assert_close(out.weights.sum(1), torch.ones(B))
        else:
            assert (out.weights == 0).all()
    masked_value_pairs(model)
    out = model(inputs(B), mask(("text", "vision"), B))
    out.intent_logits.sum().backward()
    assert model.skip_scores.grad is not None and model.skip_scores.grad[:2].abs().sum() > 0
    old = {k: v for k, v in tiny("attention").to_dict().items() if k not in ("global_skip", "pool_skip")}
    cfg = FusionConfig.from_dict(old)
    assert not cfg.global_skip and not cfg.pool_skip
