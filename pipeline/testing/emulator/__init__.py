"""A loopback provider emulator: OpenAI Chat Completions, OpenAI Responses and Anthropic
Messages streaming endpoints on a real HTTP/1.1 socket, with scripted replies and faults, and
OpenAI speech (``POST /v1/audio/speech``, streamed PCM, :class:`SpeechReply`).

Start one with ``async with open_emulator(Reply("Hello world")) as emu:`` and point the real
SDKs at ``emu.openai_base_url`` / ``emu.anthropic_base_url``. Each request is recorded in
``emu.requests`` (path, body, redacted headers, bytes and events sent, disconnect time, the
tokens it counted for); :class:`RateLimits` make it answer 429 with ``retry-after`` past a
requests- or tokens-per-minute limit, and ``emu.peak_usage()`` tells the most any window held.
The OpenAI Files and Batch endpoints (``POST /v1/files``, ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches`` (pages), ``GET /v1/batches/{id}``) answer a batch's
requests from the same replies after ``batch_delay`` seconds.
"""

from ...packaging import fixup_module_metadata as _fixup_module_metadata
from ._batches import BatchStore as BatchStore
from ._formats import Provider as Provider
from ._script import ErrorEventAfter as ErrorEventAfter
from ._script import Fault as Fault
from ._script import Finish as Finish
from ._script import MalformedAfter as MalformedAfter
from ._script import Reply as Reply
from ._script import ReplySource as ReplySource
from ._script import ResetAfter as ResetAfter
from ._script import Script as Script
from ._script import SpeechAudio as SpeechAudio
from ._script import SpeechReply as SpeechReply
from ._script import SplitUtf8 as SplitUtf8
from ._script import StallAfter as StallAfter
from ._script import StatusFault as StatusFault
from ._script import ToolCall as ToolCall
from ._script import error_event_after as error_event_after
from ._script import malformed_after as malformed_after
from ._script import parse_fault as parse_fault
from ._script import reset_after as reset_after
from ._script import split_tokens as split_tokens
from ._script import split_utf8 as split_utf8
from ._script import stall_after as stall_after
from ._script import status as status
from ._server import DEFAULT_MODELS as DEFAULT_MODELS
from ._server import DEFAULT_REPLY as DEFAULT_REPLY
from ._server import DEFAULT_SPEECH as DEFAULT_SPEECH
from ._server import ConnectionRecord as ConnectionRecord
from ._server import Emulator as Emulator
from ._server import RateLimits as RateLimits
from ._server import RequestRecord as RequestRecord
from ._server import open_emulator as open_emulator
from ._server import serve_emulator as serve_emulator

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "DEFAULT_SPEECH",
    "BatchStore",
    "ConnectionRecord",
    "Emulator",
    "ErrorEventAfter",
    "Fault",
    "Finish",
    "MalformedAfter",
    "Provider",
    "RateLimits",
    "Reply",
    "ReplySource",
    "RequestRecord",
    "ResetAfter",
    "Script",
    "SpeechAudio",
    "SpeechReply",
    "SplitUtf8",
    "StallAfter",
    "StatusFault",
    "ToolCall",
    "error_event_after",
    "malformed_after",
    "open_emulator",
    "parse_fault",
    "reset_after",
    "serve_emulator",
    "split_tokens",
    "split_utf8",
    "stall_after",
    "status",
]

_fixup_module_metadata(__name__, globals())
