"""One configuration dataclass for every fusion variant, validated in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fusion.labels import EMOTIONS, INTENTS, MEDIA_MODALITIES
from perception.errors import ConfigError

# Feature sizes of the default encoders (perception.feature_dims()); checkpoints store their own.
DEFAULT_INPUT_DIMS: dict[str, int] = {"text": 384, "speech": 384 + 8, "vision": 1280 + 5}


@dataclass
class FusionConfig:
    """Sizes and regularisation of a fusion model. ``input_dims`` maps modality -> feature size.

    The context token (previous turn's fused vector) always has size ``d_model``.
    """

    variant: str = "attention"
    input_dims: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_INPUT_DIMS))
    intents: tuple[str, ...] = INTENTS
    emotions: tuple[str, ...] = EMOTIONS
    d_model: int = 96
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.3            # 0.3 chosen over 0.1/0.2 on val (docs/fusion.md "What was tried")
    modality_dropout: float = 0.5   # training only: chance to drop each present modality (0.5 chosen on val)
    context_prob: float = 0.3       # training only: chance a sample gets a context token
    use_context: bool = True
    pool_skip: bool = True          # attention: add the attention-pooled modality tokens to the query state
    # attention: add the weighted sum's path, sum_m alpha_m * token_m with alpha = softmax over present
    # modalities of learned scalars (exactly the weighted_sum baseline), to the query state
    global_skip: bool = False
    # attention: per-modality heads on each modality token after the layers (FusionOutput.modality_logits;
    # used by the auxiliary unimodal loss, LossWeights.unimodal). Implied by ``late_logits``.
    modality_heads: bool = False
    # attention: final logits = query heads' logits + sum_m w_m * modality heads' logits_m, w = the reported weights
    late_logits: bool = False

    def __post_init__(self) -> None:
        self.intents = tuple(self.intents)
        self.emotions = tuple(self.emotions)
        self.input_dims = {k: int(v) for k, v in self.input_dims.items()}
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the bad value or combination."""
        from fusion.registry import VARIANTS

        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown fusion variant {self.variant!r}; known: {sorted(VARIANTS)}")
        unknown = set(self.input_dims) - set(MEDIA_MODALITIES)
        if unknown or not self.input_dims:
            raise ConfigError(f"input_dims must map some of {MEDIA_MODALITIES} to sizes, got {self.input_dims}")
        if any(v <= 0 for v in self.input_dims.values()):
            raise ConfigError(f"input_dims must be positive, got {self.input_dims}")
        if self.d_model <= 0 or self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be a positive multiple of n_heads ({self.n_heads})")
        if self.n_layers < 1 or self.ff_mult < 1:
            raise ConfigError(f"n_layers and ff_mult must be >= 1, got {self.n_layers}, {self.ff_mult}")
        for name in ("dropout", "modality_dropout", "context_prob"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v}")
        if len(self.intents) < 2 or len(self.emotions) < 2:
            raise ConfigError("need at least two intents and two emotions")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Token modalities this model accepts, in order (media first, then context)."""
        media = tuple(m for m in MEDIA_MODALITIES if m in self.input_dims)
        return (*media, "context") if self.use_context else media

    def dim(self, modality: str) -> int:
        return self.d_model if modality == "context" else self.input_dims[modality]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["intents"] = list(self.intents)
        d["emotions"] = list(self.emotions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FusionConfig:
        d = {"pool_skip": False, "global_skip": False, **d}  # checkpoints written before the options existed
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown fusion config keys: {sorted(extra)}")
        return cls(**d)
