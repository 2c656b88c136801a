"""The producers' error maps: SDK and transport exceptions become ProducerErrors by type.

The end-to-end tests (test_producer_openai.py, test_producer_anthropic.py) pin what real
failures against the emulator become; these pin the tables themselves, class by class.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pipeline import Error, LLMPipeError, ProducerError, ProducerStatusError, error_event
from pipeline.producers._anthropic import AnthropicProducer
from pipeline.producers._base import TRANSPORT_ERRORS, ErrorMap, parse_json, translate_error
from pipeline.producers._openai import OpenAIChatProducer, OpenAIResponsesProducer

KEY = "sk-test-DISTINCTIVE-0123456789abcdef"
REQUEST = httpx2.Request("POST", "https://api.example/v1/x")


def response(status: int, **headers: str) -> httpx2.Response:
    return httpx2.Response(status, request=REQUEST, headers=headers, json={})


def sdk_error(cls: type[Exception], status: int = 429, **headers: str) -> Exception:
    """An SDK exception as the SDK raises it (status errors carry their response)."""
    if issubclass(cls, openai.APIStatusError | anthropic.APIStatusError):
        return cls(f"boom {KEY}", response=response(status, **headers), body=None)
    if issubclass(cls, openai.APITimeoutError | anthropic.APITimeoutError):
        return cls(request=REQUEST)
    return cls(message=f"boom {KEY}", request=REQUEST)  # type: ignore[call-arg]


def summary(exc: BaseException, errors: ErrorMap) -> tuple[str, bool, int | None]:
    err = translate_error(exc, [KEY], errors)
    assert KEY not in str(err)
    return err.kind, err.retryable, getattr(err, "status_code", None)


OPENAI = OpenAIChatProducer.errors
ANTHROPIC = AnthropicProducer.errors


def test_both_openai_producers_share_one_table() -> None:
    assert OpenAIResponsesProducer.errors is OPENAI


@pytest.mark.parametrize(("sdk", "errors"), [(openai, OPENAI), (anthropic, ANTHROPIC)])
@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("RateLimitError", 429, ("status", True, 429)),
        ("InternalServerError", 503, ("status", True, 503)),
        ("ConflictError", 409, ("status", True, 409)),
        ("BadRequestError", 400, ("status", False, 400)),
        ("AuthenticationError", 401, ("status", False, 401)),
        ("APITimeoutError", None, ("timeout", True, None)),
        ("APIConnectionError", None, ("connection", True, None)),
    ],
)
def test_sdk_errors(
    sdk: Any, errors: ErrorMap, name: str, status: int | None, expected: tuple[str, bool, int]
) -> None:
    assert summary(sdk_error(getattr(sdk, name), status or 0), errors) == expected


def test_status_error_message_and_retry_after() -> None:
    exc = sdk_error(anthropic.OverloadedError, 529, **{"retry-after": "2.5"})
    err = translate_error(exc, [KEY], ANTHROPIC)
    assert isinstance(err, ProducerStatusError)
    assert (err.status_code, err.retryable, err.retry_after) == (529, True, 2.5)
    assert str(err) == "HTTP 529: boom <redacted>"
    exc = sdk_error(openai.RateLimitError, 429, **{"retry-after-ms": "1500", "retry-after": "9"})
    err = translate_error(exc, [KEY], OPENAI)
    assert isinstance(err, ProducerStatusError)
    assert err.retry_after == 1.5
    err = translate_error(sdk_error(openai.RateLimitError), [KEY], OPENAI)
    assert isinstance(err, ProducerStatusError)
    assert err.retry_after is None


@pytest.mark.parametrize("hx", [httpx, httpx2])
@pytest.mark.parametrize(
    ("name", "kind", "retryable"),
    [
        ("ConnectTimeout", "timeout", True),
        ("ReadTimeout", "timeout", True),
        ("PoolTimeout", "timeout", True),
        ("ConnectError", "connection", True),
        ("ReadError", "connection", True),
        ("WriteError", "connection", True),
        ("CloseError", "connection", True),
        ("RemoteProtocolError", "connection", True),
        ("LocalProtocolError", "protocol", False),
        ("UnsupportedProtocol", "protocol", False),
        ("DecodingError", "protocol", False),
        ("ProxyError", "producer", False),
        ("TooManyRedirects", "producer", False),
    ],
)
def test_transport_errors(hx: Any, name: str, kind: str, retryable: bool) -> None:
    exc = getattr(hx, name)(f"boom {KEY}")
    for errors in (TRANSPORT_ERRORS, OPENAI, ANTHROPIC):
        assert summary(exc, errors) == (kind, retryable, None)
    assert str(translate_error(exc, [KEY])) == f"{name}: boom <redacted>"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionResetError("reset"), "connection"),
        (OSError("no route"), "connection"),
        (TimeoutError("slow"), "timeout"),  # an OSError, but the nearer entry wins
        (trio.BrokenResourceError(), "connection"),
        (ValueError("odd"), "producer"),
    ],
)
def test_runtime_errors(exc: Exception, kind: str) -> None:
    assert translate_error(exc).kind == kind


def test_by_type_not_by_name() -> None:
    class SocketConnectionTimeout(Exception):
        """Named like a transport error, but no table lists it."""

    class Hiccup(openai.APIConnectionError):
        """A subclass of a listed class, whatever its name."""

    odd = translate_error(SocketConnectionTimeout("x"), (), OPENAI)
    assert (type(odd), odd.kind, odd.retryable) == (ProducerError, "producer", False)
    assert str(odd) == "SocketConnectionTimeout: x"
    assert translate_error(Hiccup(request=REQUEST), (), OPENAI).kind == "connection"
    # A table is per SDK: the other SDK's classes are not in it.
    assert translate_error(sdk_error(openai.APITimeoutError), (), ANTHROPIC).kind == "producer"


def test_our_own_errors_pass_through() -> None:
    err = ProducerStatusError("HTTP 500", status_code=500)
    assert translate_error(err, (), OPENAI) is err


def test_error_event() -> None:
    assert error_event(ProducerStatusError("HTTP 503: x", status_code=503)) == Error(
        kind="status", message="HTTP 503: x", retryable=True
    )
    assert error_event(KeyError("k")) == Error(
        kind="internal", message="KeyError: 'k'", retryable=False
    )
    assert issubclass(ProducerError, LLMPipeError)


# -------------------------------------------------------------------------------------------
# parse_json: json.loads's value and errors, by a shorter path


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _outcome(parse: Callable[[str], object], text: str) -> tuple[str, object]:
    try:
        return ("value", parse(text))
    except ValueError as exc:
        return (type(exc).__name__, str(exc))


@given(
    _JSON,
    st.sampled_from(["", " ", "\n", " \t"]),
    st.sampled_from(["", " ", "\r\n"]),
    st.booleans(),
)
def test_parse_json_gives_what_json_loads_gives(
    value: object, before: str, after: str, ascii_only: bool
) -> None:
    # Integers of any size, floats (infinities: ``Infinity``), strings raw or escaped.
    text = before + json.dumps(value, ensure_ascii=ascii_only) + after
    assert _outcome(parse_json, text) == _outcome(json.loads, text)
    assert type(parse_json(text)) is type(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        '"\\ud800"',  # an escaped lone surrogate: json.loads keeps it
        '"\\ud83d\\ude00"',  # an escaped pair: one character
        "NaN",
        "-Infinity",
        "1e400",
        "123456789012345678901234567890",
        "-9223372036854775809",
        "18446744073709551616",
        '{"a": 1, "a": 2}',
        "\ufeff{}",
        '"a\x01b"',
    ],
)
def test_parse_json_on_what_parsers_disagree_about(text: str) -> None:
    got, want = _outcome(parse_json, text), _outcome(json.loads, text)
    assert repr(got) == repr(want)


@given(st.text(alphabet='{}[]":,0123456789.eE+-truefalsn \\\ufeff', max_size=30))
def test_parse_json_fails_as_json_loads_fails(text: str) -> None:
    assert _outcome(parse_json, text) == _outcome(json.loads, text)
