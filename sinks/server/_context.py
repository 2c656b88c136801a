"""What the HTTP app's routes share: the parsed request, the producer factory, the config.

``StreamRequest.from_json`` validates a request body (HTTP ``POST /v1/stream``,
``POST /v1/streams``, or a WebSocket turn) and raises :class:`RequestError` naming the field,
which the routes answer with a 400 and a JSON body (``_errors.py``). A :data:`ProducerFactory`
turns a valid request into a running producer for as long as its ``async with`` block lasts
(the CLI's ``serve`` builds one from ``--provider``/``--base-url``/``--model``; tests pass their
own).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Literal, TypeAlias, get_args

import attrs

from pipeline import Policy, Producer

from ._errors import RequestError

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_MESSAGES",
    "OnDisconnect",
    "ProducerFactory",
    "ServerConfig",
    "SpeechRequest",
    "StreamRequest",
    "message_objects",
    "decode_json",
]

MAX_MESSAGES: Final = 256
MAX_JSON_DEPTH: Final = 32
"""Arrays and objects nested deeper than this in a request body (or WebSocket frame) are
refused (a valid request nests 4 deep)."""
_ROLES: Final = frozenset({"system", "user", "assistant"})
OnDisconnect: TypeAlias = Literal["cancel", "continue"]
_VOICE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,39}")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def decode_json(data: bytes | str) -> object:
    """Decode a request body or a WebSocket text frame, or raise :class:`RequestError`
    (``field`` ``"body"``, 400) saying why: not UTF-8, malformed, nested deeper than
    :data:`MAX_JSON_DEPTH`, or holding a lone surrogate (``"\\ud800"``: valid JSON, but not
    text; no producer could send it on). Whatever the input, nothing else is raised."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise RequestError("body", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"malformed JSON ({exc})") from None
    _check_decoded(value)
    return value


def _check_decoded(value: object) -> None:
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            lone = _SURROGATE.search(item)
            if lone is not None:
                code = ord(lone.group())
                where = f" at {path}" if path else ""
                raise RequestError(
                    path or "body",
                    f"not valid Unicode: a lone surrogate (U+{code:04X}){where}; send text "
                    "as UTF-8, or escape characters outside the BMP as a surrogate pair",
                )
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise RequestError("body", f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                # The key goes through the same check first, and never into the path raw.
                stack.append((key, path or "body", depth + 1))
                if _SURROGATE.search(key) is None:
                    stack.append((child, f"{path}.{key}" if path else key, depth + 1))
        else:
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def message_objects(value: object) -> list[dict[str, Any]]:
    """A request's ``messages``, checked to be a non-empty list of at most
    :data:`MAX_MESSAGES` objects (each route then checks their fields). Raises
    :class:`RequestError` naming ``messages`` or ``messages[i]``."""
    if not isinstance(value, list) or not value:
        raise RequestError("messages", "expected a non-empty list")
    if len(value) > MAX_MESSAGES:
        raise RequestError("messages", f"at most {MAX_MESSAGES} messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}]", "expected an object")
    return value


@attrs.frozen
class StreamRequest:
    """A validated request for one generation."""

    messages: tuple[Mapping[str, Any], ...]
    provider: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    policy: Policy = Policy.COALESCE
    max_buffer_bytes: int | None = None
    tools: tuple[Mapping[str, Any], ...] = ()  # Chat Completions function tools
    # A resumable generation's fate when its readers leave (None: "continue"). "continue":
    # it goes on into the store for a later resume (bounded by idle_cancel_after); "cancel":
    # it is cancelled once every reader it had has gone (see ``_resumable._watch``).
    on_disconnect: OnDisconnect | None = None

    @classmethod
    def from_json(
        cls, body: object, *, providers: Sequence[str], resumable: bool = False
    ) -> StreamRequest:
        """Validate a decoded JSON body; ``providers`` are the names this server accepts.
        ``on_disconnect`` is accepted only for a ``resumable`` generation (a live stream always
        ends with its client)."""
        if not isinstance(body, dict):
            raise RequestError("body", "expected a JSON object")
        unknown = set(body) - {
            "messages",
            "prompt",
            "provider",
            "model",
            "max_tokens",
            "temperature",
            "buffering",
            "on_disconnect",
        }
        if unknown:
            name = sorted(unknown)[0]
            raise RequestError(name or "body", "unknown field" if name else "a field named ''")
        messages = body.get("messages")
        if messages is None and isinstance(body.get("prompt"), str):
            messages = [{"role": "user", "content": body["prompt"]}]
        if messages is None:
            raise RequestError("messages", "missing (give messages, or a prompt string)")
        clean: list[Mapping[str, Any]] = []
        for i, m in enumerate(message_objects(messages)):
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or role not in _ROLES:
                raise RequestError(f"messages[{i}].role", f"expected one of {sorted(_ROLES)}")
            if not isinstance(content, str):
                raise RequestError(f"messages[{i}].content", "expected a string")
            clean.append({"role": role, "content": content})
        provider = body.get("provider")
        if provider is not None and provider not in providers:
            raise RequestError(
                "provider", f"unknown provider {provider!r} (one of {list(providers)})"
            )
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise RequestError("model", "expected a non-empty string")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise RequestError("max_tokens", "expected a positive integer")
        temperature = body.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise RequestError("temperature", "expected a number from 0 to 2")
        buffering = body.get("buffering") or {}
        if not isinstance(buffering, dict):
            raise RequestError("buffering", "expected an object")
        try:
            policy = Policy(buffering.get("policy", "coalesce"))
        except ValueError:
            raise RequestError("buffering.policy", f"one of {[p.value for p in Policy]}") from None
        max_bytes = buffering.get("max_bytes")
        if max_bytes is not None and (
            isinstance(max_bytes, bool)
            or not isinstance(max_bytes, int)
            or not 1 <= max_bytes <= 1 << 24
        ):
            raise RequestError("buffering.max_bytes", "expected an integer from 1 to 16 MiB")
        on_disconnect = body.get("on_disconnect")
        if on_disconnect is not None:
            if not resumable:
                raise RequestError(
                    "on_disconnect", "only for resumable generations (POST /v1/streams)"
                )
            if on_disconnect not in get_args(OnDisconnect):
                raise RequestError("on_disconnect", f"one of {list(get_args(OnDisconnect))}")
        return cls(
            on_disconnect=on_disconnect,
            messages=tuple(clean),
            provider=provider,
            model=model,
            max_tokens=max_tokens,
            temperature=None if temperature is None else float(temperature),
            policy=policy,
            max_buffer_bytes=max_bytes,
        )


@attrs.frozen
class SpeechRequest:
    """A WebSocket turn's ``"speech"`` field: speak the answer with espeak-ng in ``voice`` (a
    language code such as ``"en"``, ``"fr"``, ``"en-us"``, or a voice name, optionally with a
    ``+variant``) at ``rate`` words per minute (80-450)."""

    voice: str = "en"
    rate: int = 175

    @classmethod
    def from_json(cls, body: object) -> SpeechRequest:
        """Validate the decoded ``"speech"`` object (``{}`` takes the defaults). Whether
        espeak-ng has the voice is known only when it speaks (see ``_ws.py``)."""
        if not isinstance(body, dict):
            raise RequestError("speech", 'expected an object such as {"voice": "en"}')
        unknown = set(body) - {"voice", "rate"}
        if unknown:
            raise RequestError(f"speech.{sorted(unknown)[0]}", "unknown field")
        voice = body.get("voice", "en")
        if not isinstance(voice, str) or not _VOICE.fullmatch(voice):
            raise RequestError(
                "speech.voice",
                "expected a voice name such as 'en' or 'en-us' (at most 40 letters, digits, "
                "'-', '_' or '+')",
            )
        rate = body.get("rate", 175)
        if isinstance(rate, bool) or not isinstance(rate, int) or not 80 <= rate <= 450:
            raise RequestError("speech.rate", "expected an integer from 80 to 450 (words/minute)")
        return cls(voice=voice, rate=rate)


ProducerFactory: TypeAlias = Callable[[StreamRequest], AbstractAsyncContextManager[Producer]]


@attrs.frozen
class ServerConfig:
    """Limits and options of the HTTP app. Sizes in bytes, times in seconds."""

    providers: tuple[str, ...] = ("default",)
    max_body_bytes: int = 1 << 20
    max_streams_per_client: int = 8  # open streaming connections (live, resume, WebSocket)
    max_streams_total: int = 1000
    max_generations_per_client: int = 8  # resumable generations running (they outlive requests)
    max_websockets_per_client: int = 16  # open WebSocket connections, idle or not
    heartbeat_interval: float = 15.0
    # A write that waits this long for a client that stays connected but reads nothing: the
    # client is frozen, and the stream stops waiting for it (see ``_stream.wait_frozen``).
    send_timeout: float = 30.0
    idle_cancel_after: float = 60.0  # a resumable generation nobody follows is cancelled
    # Bearer tokens (auth is on when either is set): ``auth_token`` is the principal "default";
    # ``auth_tokens`` are (name, token) pairs, one per principal (see ``_auth.py``). Never shown
    # by repr.
    auth_token: str | None = attrs.field(default=None, repr=False)
    auth_tokens: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    # CORS off unless origins are configured; also the origins (besides the page's own) whose
    # pages may open the WebSocket ("*": any)
    cors_origins: tuple[str, ...] = ()
    shutdown_grace: float = 5.0
    store_url: str | None = None  # None: in memory; "redis://...": Redis Streams
    # A resumable stream's owner lease: the process running its generation renews it every
    # third of this; a stream whose lease ran out (the process died, or lost the store for that
    # long) is ended by whoever sees it next (a reader, DELETE) with a retryable error.
    owner_lease: float = 15.0
    # How long a generation retries an unreachable store before it gives up (the events wait in
    # its spill file meanwhile).
    store_retry_for: float = 30.0
    # OpenTelemetry providers for the per-stream spans and metrics (None: the global ones). Used
    # only when the opentelemetry package is installed; not part of equality.
    otel_tracer_provider: Any = attrs.field(default=None, eq=False, repr=False)
    otel_meter_provider: Any = attrs.field(default=None, eq=False, repr=False)
