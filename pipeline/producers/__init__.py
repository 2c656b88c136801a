"""Producers: the sources of a pipeline's events.

``ScriptedProducer`` plays a script (demos, tests). The SDK producers stream from real providers
through the official ``openai`` and ``anthropic`` SDKs; any OpenAI-compatible server (vLLM,
Ollama, llama.cpp, the embedded local model) works through ``OpenAIChatProducer`` with the
client's ``base_url``.
"""

from ._anthropic import AnthropicProducer as AnthropicProducer
from ._anthropic import anthropic_client as anthropic_client
from ._base import DEFAULT_FIRST_TOKEN_TIMEOUT as DEFAULT_FIRST_TOKEN_TIMEOUT
from ._base import DEFAULT_STALL_TIMEOUT as DEFAULT_STALL_TIMEOUT
from ._base import CostGuard as CostGuard
from ._base import CostLimitError as CostLimitError
from ._base import RetryPolicy as RetryPolicy
from ._base import SSEProducer as SSEProducer
from ._base import StreamParser as StreamParser
from ._base import estimate_tokens as estimate_tokens
from ._openai import OpenAIChatProducer as OpenAIChatProducer
from ._openai import OpenAIResponsesProducer as OpenAIResponsesProducer
from ._openai import openai_client as openai_client
from ._scripted import ScriptedProducer as ScriptedProducer
from ._scripted import Step as Step

__all__ = [
    "DEFAULT_FIRST_TOKEN_TIMEOUT",
    "DEFAULT_STALL_TIMEOUT",
    "AnthropicProducer",
    "CostGuard",
    "CostLimitError",
    "OpenAIChatProducer",
    "OpenAIResponsesProducer",
    "RetryPolicy",
    "SSEProducer",
    "ScriptedProducer",
    "Step",
    "StreamParser",
    "anthropic_client",
    "estimate_tokens",
    "openai_client",
]
