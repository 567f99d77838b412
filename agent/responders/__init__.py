"""Reply backends, chosen by ``ResponderConfig.kind``: ``grounded``, ``local``, ``openai``, ``extractive``."""

from __future__ import annotations

from ..config import ResponderConfig
from .base import CancelToken, Chunk, Responder, ResponderRequest, ToolCall, stream_from_thread
from .extractive import ExtractiveResponder
from .grounded import GroundedResponder
from .local import LocalLLM, LocalResponder
from .openai_compat import OpenAIResponder


def build_responder(config: ResponderConfig, *, llm: LocalLLM | None = None) -> Responder:
    """The responder named by ``config.kind``; ``llm`` shares an already-built local model."""
    config.validate()
    if config.kind == "local":
        return LocalResponder(llm or LocalLLM(config.local))
    if config.kind == "openai":
        return OpenAIResponder(config.openai)
    if config.kind == "grounded":
        return GroundedResponder()
    return ExtractiveResponder()


__all__ = [
    "CancelToken", "Chunk", "ExtractiveResponder", "GroundedResponder", "LocalLLM", "LocalResponder", "OpenAIResponder",
    "Responder", "ResponderRequest", "ToolCall", "build_responder", "stream_from_thread",
]
