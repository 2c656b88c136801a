"""How the server answers an exception: one table from exception type to HTTP status, JSON error
body, retryable flag and headers (:data:`ERRORS`), used by every route and by the WebSocket.

The server's own exceptions extend llmpipe's tree (``pipeline.LLMPipeError``)::

    LLMPipeError
    ├── ConfigError
    │   └── RequestError           an invalid request field (400 unless it says otherwise)
    ├── ConsumerGone
    │   └── ClientGone             the HTTP client went away (disconnect, failed write)
    ├── StreamFailed               a generation ended with an ``Error`` event before its
    │                              answer was sent (a non-streamed answer): 502/503
    └── Refused                    the server refuses a request
        ├── Unauthorized           401, with a ``WWW-Authenticate`` challenge
        │   ├── MissingToken
        │   └── InvalidToken
        ├── NotFound               404
        ├── PayloadTooLarge        413
        ├── UnsupportedMediaType   415
        ├── RateLimited            429, Retry-After, retryable
        ├── Overloaded             503, Retry-After, retryable
        ├── ShuttingDown           503, retryable
        └── NotReady               503, retryable (the app's lifespan is not running)

A :class:`Refused` carries only its message and the body's extra fields (``limit``, ``id``,
``field``); status, error type, retryability and headers come from :data:`ERRORS`, which also
maps the store's errors and, for a generation that failed before its first event, any llmpipe
error (``upstream``: 503 when retryable, else 502) and anything else (``internal``: 500, the body
does not echo internals). :func:`error_reply` looks an exception up by its type (the nearest
class in its MRO that the table names) and builds the answer; the WebSocket turns the same
answer into its error frame (:meth:`ErrorReply.event`), and the OpenAI-compatible routes into
the OpenAI API's error body (:meth:`ErrorReply.openai_body`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
from starlette.responses import Response

from pipeline import ConfigError, ConsumerGone, Error, LLMPipeError, error_event, json_text
from pipeline.stores import StoreError, StoreFull
from pipeline.wire import openai_error

__all__ = [
    "ERRORS",
    "REFUSALS",
    "ClientGone",
    "ErrorReply",
    "ErrorSpec",
    "Forbidden",
    "InvalidToken",
    "MissingToken",
    "NotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "Refused",
    "RequestError",
    "ShuttingDown",
    "StreamFailed",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_reply",
]


class RequestError(ConfigError):
    """A request body is invalid. ``field`` names the problem; ``status`` is the HTTP status."""

    def __init__(self, field: str, message: str, *, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status

    def to_json(self) -> dict[str, Any]:
        """The JSON body that answers it (``{"error": {"type": "invalid_request", ...}}``)."""
        return error_reply(self).body


class ClientGone(ConsumerGone):
    """The HTTP client went away (``http.disconnect`` or a failed write)."""


class StreamFailed(LLMPipeError):
    """A generation ended with ``event`` (an :class:`pipeline.Error`) before anything of its
    answer was sent, so the answer can still be an error status (``"stream": false``). Its
    ``kind`` and ``retryable`` are the event's."""

    def __init__(self, event: Error) -> None:
        super().__init__(event.message)
        self.kind = event.kind
        self.retryable = event.retryable
        self.event = event


class Refused(LLMPipeError):
    """The server refuses a request. ``fields`` are extra members of the JSON error object
    (such as ``limit``); everything else about the answer is in :data:`ERRORS`."""

    kind = "refused"

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.fields: Mapping[str, object] = fields


class Unauthorized(Refused):
    """The request lacks the bearer token the server requires."""


class MissingToken(Unauthorized):
    """No ``Authorization`` header (nor ``bearer.`` WebSocket subprotocol)."""


class InvalidToken(Unauthorized):
    """A bearer token that is not the server's."""


class Forbidden(Refused):
    """The request may not be made from where it comes from (a WebSocket handshake from a web
    page of another origin)."""


class NotFound(Refused):
    """No such resource (a stream id)."""


class PayloadTooLarge(Refused):
    """The request body is over ``max_body_bytes``."""


class UnsupportedMediaType(Refused):
    """The request body is not JSON."""


class RateLimited(Refused):
    """A per-client limit (streams, generations) is reached."""


class Overloaded(Refused):
    """A server-wide limit is reached."""


class ShuttingDown(Refused):
    """The server is shutting down (or not accepting generations)."""


class NotReady(Refused):
    """The app's lifespan is not running (no store, no nursery)."""


@attrs.frozen
class ErrorSpec:
    """How the server answers one type of exception.

    The body says ``"retryable": true`` when a retry may work. ``retryable`` ``None``: as the
    exception says (an llmpipe error's own ``retryable``); then the body always says it, and the
    status is ``retry_status`` when it is retryable. ``message`` ``None``: the exception's text;
    else this fixed text (the exception's may hold internals). ``failure``: the request was valid
    but its generation failed; the body also names the error's ``kind``.
    """

    status: int
    type: str
    retryable: bool | None = False
    headers: Mapping[str, str] = attrs.field(factory=dict)
    message: str | None = None
    retry_status: int | None = None
    failure: bool = False


_RETRY_AFTER: Final = {"Retry-After": "1"}
_CHALLENGE: Final = 'Bearer realm="llmpipe"'

ERRORS: Final[Mapping[type[Exception], ErrorSpec]] = {
    RequestError: ErrorSpec(400, "invalid_request"),
    ConfigError: ErrorSpec(400, "invalid_request"),
    MissingToken: ErrorSpec(401, "unauthorized", headers={"WWW-Authenticate": _CHALLENGE}),
    InvalidToken: ErrorSpec(
        401,
        "unauthorized",
        headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
    ),
    Forbidden: ErrorSpec(403, "forbidden"),
    NotFound: ErrorSpec(404, "not_found"),
    PayloadTooLarge: ErrorSpec(413, "payload_too_large"),
    UnsupportedMediaType: ErrorSpec(415, "unsupported_media_type"),
    RateLimited: ErrorSpec(429, "rate_limited", retryable=True, headers=_RETRY_AFTER),
    Overloaded: ErrorSpec(503, "overloaded", retryable=True, headers=_RETRY_AFTER),
    ShuttingDown: ErrorSpec(503, "shutting_down", retryable=True),
    NotReady: ErrorSpec(503, "not_ready", retryable=True),
    StoreFull: ErrorSpec(503, "store_full", retryable=True),
    StoreError: ErrorSpec(503, "store", retryable=True, message="the stream store is unavailable"),
    LLMPipeError: ErrorSpec(502, "upstream", retryable=None, retry_status=503, failure=True),
    Exception: ErrorSpec(500, "internal", message="internal error", failure=True),
}
"""The answer to each type of exception (an exception takes the entry of the nearest class in
its MRO)."""

REFUSALS: Final = (Refused, RequestError, StoreError)
"""What a route answers with an error response when it escapes (the store's errors included:
``StreamNotFound`` must be turned into :class:`NotFound` where a stream id is looked up)."""


@attrs.frozen
class ErrorReply:
    """The answer to one exception: ``status``, the JSON ``error`` object, whether a retry may
    work, and the response headers."""

    status: int
    error: Mapping[str, object]
    retryable: bool
    headers: Mapping[str, str]

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"type": ..., "message": ..., ...}}``."""
        return {"error": dict(self.error)}

    @property
    def kind(self) -> str:
        """What telemetry and error events call it: the error's ``kind``, else its type."""
        return str(self.error.get("kind", self.error["type"]))

    def response(self) -> Response:
        return Response(
            json_text(self.body).encode(),
            status_code=self.status,
            headers=dict(self.headers),
            media_type="application/json",
        )

    def openai_body(self) -> dict[str, Any]:
        """The same answer as the OpenAI API's error body, for the OpenAI-compatible routes:
        ``{"error": {"message", "type", "param", "code"}}``. ``type`` is OpenAI's class of error
        (``invalid_request_error`` for a 4xx, ``requests`` for a 429, ``server_error`` for a
        5xx), ``code`` llmpipe's (``kind``, else its type), ``param`` the request field."""
        if self.status == 429:
            kind = "requests"
        elif self.status < 500:
            kind = "invalid_request_error"
        else:
            kind = "server_error"
        field = self.error.get("field")
        return openai_error(
            str(self.error["message"]),
            kind,
            param=None if field is None else str(field),
            code=self.kind,
        )

    def openai_response(self) -> Response:
        """:meth:`openai_body` with this answer's status and headers (lone surrogates escaped,
        as :meth:`response` does)."""
        return Response(
            json_text(self.openai_body()).encode(),
            status_code=self.status,
            headers=dict(self.headers),
            media_type="application/json",
        )

    def event(self) -> Error:
        """The same answer as an :class:`pipeline.Error` event (a WebSocket turn's end, or a
        stream that fails after its headers were sent)."""
        return Error(kind=self.kind, message=str(self.error["message"]), retryable=self.retryable)


def _spec(exc: Exception) -> ErrorSpec:
    for cls in type(exc).__mro__:
        spec = ERRORS.get(cls)
        if spec is not None:
            return spec
    raise AssertionError("unreachable: Exception is in the table")  # pragma: no cover


def error_reply(exc: Exception) -> ErrorReply:
    """The answer to ``exc`` (see :data:`ERRORS`)."""
    spec = _spec(exc)
    reported = error_event(exc)  # kind and retryable, as llmpipe reports the exception
    retryable = reported.retryable if spec.retryable is None else spec.retryable
    status = spec.status
    if isinstance(exc, RequestError):
        status = exc.status
    elif retryable and spec.retry_status is not None:
        status = spec.retry_status
    error: dict[str, object] = {"type": spec.type}
    if spec.failure:
        error["kind"] = reported.kind
    error["message"] = str(exc) if spec.message is None else spec.message
    if isinstance(exc, Refused):
        error.update(exc.fields)
    elif isinstance(exc, RequestError):
        error["field"] = exc.field
    if retryable or spec.retryable is None:
        error["retryable"] = retryable
    return ErrorReply(status, error, retryable, spec.headers)
