"""``Retry-After``: how long a server asks a client to wait (RFC 9110, section 10.2.3).

Pure and synchronous: safe from any task or thread.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = ["parse_retry_after", "retry_after_seconds"]

# RFC 9110's delay-seconds is 1*DIGIT; a fraction is accepted too, as the provider SDKs do
# (and as the llmpipe emulator sends).
_SECONDS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str, *, now: datetime.datetime | None = None) -> float | None:
    """Seconds to wait per a ``Retry-After`` value, or ``None`` if it is neither form.

    Both forms of RFC 9110 are read: delay-seconds (``"120"``; a fraction such as ``"2.5"``
    too) and an HTTP-date in any of its three formats (IMF-fixdate, RFC 850, asctime; always
    UTC), measured from ``now`` (default: the wall clock; a date in the past gives ``0.0``).
    """
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return _finite(float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime-date carries no zone: HTTP dates are UTC
        when = when.replace(tzinfo=datetime.UTC)
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    return max(0.0, (when - now).total_seconds())


def retry_after_seconds(
    headers: Mapping[str, str], *, now: datetime.datetime | None = None
) -> float | None:
    """Seconds to wait per a response's headers, or ``None`` when they do not say.

    ``headers`` must look names up case-insensitively (``httpx.Headers`` does). The
    ``retry-after-ms`` header (milliseconds; sent by OpenAI and Anthropic) wins over
    ``Retry-After`` (see :func:`parse_retry_after`).
    """
    ms = headers.get("retry-after-ms", "").strip()
    if _SECONDS.fullmatch(ms):
        return _finite(float(ms) / 1000)
    value = headers.get("retry-after")
    return None if value is None else parse_retry_after(value, now=now)


def _finite(seconds: float) -> float | None:
    return seconds if math.isfinite(seconds) else None  # "9" * 400 is inf
