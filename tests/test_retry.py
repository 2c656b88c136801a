"""The one backoff (pipeline.Backoff) and the one Retry-After parser (pipeline.wire)."""

from __future__ import annotations

import datetime
import math
import random

import httpx
import pytest

from pipeline import Backoff, ConfigError
from pipeline.client import Backoff as ClientBackoff
from pipeline.producers import RetryPolicy
from pipeline.wire import parse_retry_after, retry_after_seconds

NOW = datetime.datetime(1994, 11, 6, 8, 49, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("2.5", 2.5),  # a fraction, as the provider SDKs accept
        ("0", 0.0),
        # The three HTTP-date formats RFC 9110 says a recipient must accept (all UTC).
        ("Sun, 06 Nov 1994 08:49:37 GMT", 37.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 37.0),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", 37.0),  # obsolete asctime, which carries no zone
        ("Sat, 05 Nov 1994 08:49:37 GMT", 0.0),  # in the past: no wait
    ],
)
def test_parse_retry_after(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("value", ["", "soon", "-1", "1e3", "nan", "inf", "9" * 400, "0x10"])
def test_parse_retry_after_refuses_what_is_neither_form(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_parse_retry_after_measures_a_date_from_the_wall_clock() -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    seconds = parse_retry_after(soon.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert seconds is not None
    assert 28 < seconds <= 30


def test_retry_after_seconds_reads_the_headers() -> None:
    headers = httpx.Headers
    assert retry_after_seconds(headers({"Retry-After": "7"})) == 7.0
    assert retry_after_seconds(headers({"retry-after-ms": "1500", "Retry-After": "7"})) == 1.5
    assert retry_after_seconds(headers({"retry-after-ms": "x", "Retry-After": "7"})) == 7.0
    date = {"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}
    assert retry_after_seconds(headers(date), now=NOW) == 37.0
    assert retry_after_seconds(headers({})) is None


def test_one_backoff_for_client_and_producers() -> None:
    assert ClientBackoff is Backoff
    # The producers' default: 0.5 s doubling to 20 s, the provider's retry-after uncapped.
    default = RetryPolicy().backoff
    assert default == Backoff(initial=0.5, maximum=20.0, max_hint=math.inf)
    assert default.delay(0, 3600.0) == 3600.0


def test_backoff_full_jitter_and_hint() -> None:
    rng = random.Random(7)
    b = Backoff(initial=1.0, maximum=4.0)
    waits = [b.delay(2, rng=rng) for _ in range(2000)]
    assert 0.0 <= min(waits) < 0.1  # uniform over [0, ceiling]
    assert 3.9 < max(waits) <= 4.0
    assert Backoff(initial=1.0, maximum=4.0, jitter=False).delay(5_000) == 4.0  # no overflow
    assert b.delay(0, 30.0, rng=rng) == 30.0
    assert b.delay(0, 1e9, rng=rng) == 60.0  # max_hint


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1.0}, {"initial": 9.0, "maximum": 8.0}, {"multiplier": 0.5}, {"max_hint": -1.0}],
)
def test_backoff_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_retry_policy_validates() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
