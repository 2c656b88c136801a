"""Producers: the sources of a pipeline's events.

``ScriptedProducer`` plays a script (demos, tests). The SDK producers stream from real providers
through the official ``openai`` and ``anthropic`` SDKs; any OpenAI-compatible server (vLLM,
Ollama, llama.cpp, the embedded local model) works through ``OpenAIChatProducer`` with the
client's ``base_url``; ``open_local_server`` serves the embedded local model (``llmpipe[local]``).

``AnthropicProducer`` and ``anthropic_client`` load lazily (PEP 562 ``__getattr__``): the
``anthropic`` SDK is imported on first access, not with this package. It is a large import
(about 146k GC-tracked objects) that a server with another provider never needs.
"""

from __future__ import annotations

import typing as _typing

from ..packaging import fixup_module_metadata as _fixup_module_metadata
from ..packaging import lazy_attributes as _lazy_attributes
from ._backend import DEFAULT_MODELS as DEFAULT_MODELS
from ._backend import DEMO_TEXT as DEMO_TEXT
from ._backend import PROVIDERS as PROVIDERS
from ._backend import Backend as Backend
from ._backend import ProducerRequest as ProducerRequest
from ._backend import open_backend as open_backend
from ._base import DEFAULT_FIRST_TOKEN_TIMEOUT as DEFAULT_FIRST_TOKEN_TIMEOUT
from ._base import DEFAULT_STALL_TIMEOUT as DEFAULT_STALL_TIMEOUT
from ._base import SNIPPET_CHARS as SNIPPET_CHARS
from ._base import TRANSPORT_ERRORS as TRANSPORT_ERRORS
from ._base import CostGuard as CostGuard
from ._base import CostLimitError as CostLimitError
from ._base import ErrorMap as ErrorMap
from ._base import RetryPolicy as RetryPolicy
from ._base import SSEProducer as SSEProducer
from ._base import StreamParser as StreamParser
from ._base import estimate_tokens as estimate_tokens
from ._base import translate_error as translate_error
from ._local import DEFAULT_LOCAL_THREADS as DEFAULT_LOCAL_THREADS
from ._local import LocalServer as LocalServer
from ._local import local_model_path as local_model_path
from ._local import open_local_server as open_local_server
from ._openai import OpenAIChatProducer as OpenAIChatProducer
from ._openai import OpenAIResponsesProducer as OpenAIResponsesProducer
from ._openai import openai_client as openai_client
from ._scripted import ScriptedProducer as ScriptedProducer
from ._scripted import Step as Step

if _typing.TYPE_CHECKING:
    from ._anthropic import AnthropicProducer as AnthropicProducer
    from ._anthropic import anthropic_client as anthropic_client

__all__ = [
    "TRANSPORT_ERRORS",
    "ErrorMap",
    "translate_error",
    "DEFAULT_MODELS",
    "DEMO_TEXT",
    "PROVIDERS",
    "Backend",
    "ProducerRequest",
    "open_backend",
    "DEFAULT_FIRST_TOKEN_TIMEOUT",
    "DEFAULT_LOCAL_THREADS",
    "DEFAULT_STALL_TIMEOUT",
    "SNIPPET_CHARS",
    "AnthropicProducer",
    "CostGuard",
    "CostLimitError",
    "LocalServer",
    "OpenAIChatProducer",
    "OpenAIResponsesProducer",
    "RetryPolicy",
    "SSEProducer",
    "ScriptedProducer",
    "Step",
    "StreamParser",
    "anthropic_client",
    "estimate_tokens",
    "local_model_path",
    "open_local_server",
    "openai_client",
]

# Public name -> the private module that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "AnthropicProducer": "._anthropic",
    "anthropic_client": "._anthropic",
}

if not _typing.TYPE_CHECKING:  # hidden from mypy, which would type every unknown name as Any
    __getattr__, __dir__ = _lazy_attributes(globals(), _LAZY, __all__)

_fixup_module_metadata(__name__, globals())
