"""Wire formats: how llmpipe events and providers' streams look as bytes.

Server-sent events (:class:`SSEDecoder`, :func:`encode_event`, :func:`encode_comment`, to the
letter of the WHATWG standard; :func:`event_frame` for one llmpipe event) and newline-delimited
JSON (:func:`ndjson_line`); the OpenAI Chat Completions format (:class:`ChatCompletionChunks`,
:class:`ChatCompletionBuilder`, :func:`openai_error`) and the Vercel AI SDK's UI message stream
(:class:`UIMessageStream`), which existing clients read; the ``Retry-After`` header
(:func:`parse_retry_after`, :func:`retry_after_seconds`). Shared by the producers (decoding
providers' streams), the server (encoding) and the client (decoding). Pure and synchronous:
safe from any task or thread.
"""

from ..packaging import fixup_module_metadata as _fixup_module_metadata
from ._frames import SSE_CONTENT_TYPE as SSE_CONTENT_TYPE
from ._frames import SSE_HEADERS as SSE_HEADERS
from ._frames import event_frame as event_frame
from ._ndjson import NDJSON_CONTENT_TYPE as NDJSON_CONTENT_TYPE
from ._ndjson import ndjson_line as ndjson_line
from ._openai_chat import DONE_FRAME as DONE_FRAME
from ._openai_chat import ChatCompletionBuilder as ChatCompletionBuilder
from ._openai_chat import ChatCompletionChunks as ChatCompletionChunks
from ._openai_chat import finish_reason as finish_reason
from ._openai_chat import openai_error as openai_error
from ._retry_after import parse_retry_after as parse_retry_after
from ._retry_after import retry_after_seconds as retry_after_seconds
from ._sse import SSEDecoder as SSEDecoder
from ._sse import SSEEvent as SSEEvent
from ._sse import encode_comment as encode_comment
from ._sse import encode_event as encode_event
from ._ui_messages import UI_MESSAGE_HEADERS as UI_MESSAGE_HEADERS
from ._ui_messages import UIMessageStream as UIMessageStream

__all__ = [
    "DONE_FRAME",
    "NDJSON_CONTENT_TYPE",
    "SSE_CONTENT_TYPE",
    "SSE_HEADERS",
    "SSEDecoder",
    "SSEEvent",
    "UI_MESSAGE_HEADERS",
    "ChatCompletionBuilder",
    "ChatCompletionChunks",
    "UIMessageStream",
    "encode_comment",
    "encode_event",
    "event_frame",
    "finish_reason",
    "ndjson_line",
    "openai_error",
    "parse_retry_after",
    "retry_after_seconds",
]

_fixup_module_metadata(__name__, globals())
