"""The HTTP serving layer: an ASGI app (Starlette on trio) that streams llmpipe events.

``create_app(producer_factory, config)`` builds the app; ``serve(app, host, port)`` runs it
in-process on hypercorn's trio worker (start it with ``nursery.start`` to learn the port).
Routes: ``POST /v1/stream`` (SSE or NDJSON), resumable ``POST /v1/streams`` +
``GET /v1/streams/{id}/events`` + ``DELETE /v1/streams/{id}``, ``/v1/ws`` (WebSocket),
``GET /health`` and ``GET /metrics``. A refused request raises a :class:`Refused` (or a
:class:`RequestError`), answered from one table of statuses and JSON error bodies.
"""

from pipeline.packaging import fixup_module_metadata as _fixup_module_metadata
from pipeline.packaging import missing_extra as _missing_extra

try:  # the server's own dependencies are the 'serve' extra
    import hypercorn as _hypercorn  # noqa: F401
    import prometheus_client as _prometheus_client  # noqa: F401
    import starlette as _starlette  # noqa: F401
except ImportError as _exc:
    raise _missing_extra("serve", "llmpipe's HTTP server", _exc) from _exc

from ._app import create_app as create_app
from ._auth import parse_tokens as parse_tokens
from ._auth import read_tokens as read_tokens
from ._context import MAX_MESSAGES as MAX_MESSAGES
from ._context import ProducerFactory as ProducerFactory
from ._context import ServerConfig as ServerConfig
from ._context import SpeechRequest as SpeechRequest
from ._context import StreamRequest as StreamRequest
from ._errors import Refused as Refused
from ._errors import RequestError as RequestError
from ._runtime import AppRuntime as AppRuntime
from ._runtime import get_runtime as get_runtime
from ._serve import GC_THRESHOLD as GC_THRESHOLD
from ._serve import serve as serve

__all__ = [
    "GC_THRESHOLD",
    "MAX_MESSAGES",
    "AppRuntime",
    "ProducerFactory",
    "Refused",
    "RequestError",
    "ServerConfig",
    "SpeechRequest",
    "StreamRequest",
    "create_app",
    "get_runtime",
    "parse_tokens",
    "read_tokens",
    "serve",
]

_fixup_module_metadata(__name__, globals())
