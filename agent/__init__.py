"""Agent layer: knowledge packs, retrieval, grounded streaming replies, policy, actions, sessions.

>>> from agent import Agent, AgentConfig, TurnInput, load_pack
>>> pack = load_pack()                       # the demo kiosk pack
>>> sorted(pack.actions)[:2]
['handoff_to_human', 'print_receipt']

See docs/agent.md for the pack format and the responders' configuration.
"""

from .agent import Agent, PerceivedTurn, TurnInput, perception_summary, turn_text
from .config import (
    AgentConfig,
    DialogueConfig,
    LocalLLMConfig,
    OpenAIConfig,
    PolicyConfig,
    PromptConfig,
    ResponderConfig,
    RetrievalConfig,
    StoreConfig,
)
from .control import ToolResult, TurnControl
from .errors import ActionError, PackError, ResponderError, SessionError
from .events import (
    ActionEvent,
    ActionRejectedEvent,
    AgentErrorEvent,
    AgentEvent,
    PerceptionSummaryEvent,
    TextDeltaEvent,
    TurnDoneEvent,
    TurnFusedEvent,
)
from .pack import KnowledgePack, load_pack
from .prompt import Prompt, build_prompt
from .session import Session, TurnRecord
from .store import SessionStore

__all__ = [
    "ActionError",
    "ActionEvent",
    "ActionRejectedEvent",
    "Agent",
    "AgentConfig",
    "AgentErrorEvent",
    "AgentEvent",
    "DialogueConfig",
    "KnowledgePack",
    "LocalLLMConfig",
    "OpenAIConfig",
    "PackError",
    "PerceivedTurn",
    "PerceptionSummaryEvent",
    "PolicyConfig",
    "Prompt",
    "PromptConfig",
    "ResponderConfig",
    "ResponderError",
    "RetrievalConfig",
    "Session",
    "SessionError",
    "SessionStore",
    "StoreConfig",
    "TextDeltaEvent",
    "ToolResult",
    "TurnControl",
    "TurnDoneEvent",
    "TurnFusedEvent",
    "TurnInput",
    "TurnRecord",
    "build_prompt",
    "load_pack",
    "perception_summary",
    "turn_text",
]
