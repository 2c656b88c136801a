"""Bearer tokens and the principals they name.

A server with auth on knows one or more *principals*, each a name and a bearer token
(``ServerConfig.auth_tokens``; ``ServerConfig.auth_token`` is the principal
:data:`DEFAULT_PRINCIPAL`). A request names its principal by its token
(:func:`authenticate`). A resumable stream belongs to the principal that created it: it is
kept in the store under :func:`owned_key`, so another principal asking for the same id finds
nothing (404, as for an id that never existed: ids do not leak), in every process sharing the
store.

Tokens come from a file of ``name:token`` lines (:func:`read_tokens`), so they need not appear
on a command line (where ``ps`` shows them).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from pipeline import ConfigError

from ._errors import InvalidToken, MissingToken

__all__ = [
    "DEFAULT_PRINCIPAL",
    "authenticate",
    "check_tokens",
    "owned_key",
    "parse_tokens",
    "read_tokens",
]

DEFAULT_PRINCIPAL: Final = "default"
"""The principal of ``ServerConfig.auth_token``, and of a tokens file's lone bare token."""
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN: Final = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII, no spaces (a header value)


def check_tokens(tokens: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``tokens`` (name, token) as a tuple, or :class:`ConfigError` naming the problem: a name
    that is not 1-64 letters, digits, ``_`` or ``-``, a token that is not 1-4096 printable
    ASCII characters without spaces, a name or a token given twice."""
    out = tuple(tokens)
    names: set[str] = set()
    values: set[str] = set()
    for name, token in out:
        if not _NAME.fullmatch(name):
            raise ConfigError(f"principal {name!r}: a name is 1-64 letters, digits, '_' or '-'")
        if not _TOKEN.fullmatch(token):
            raise ConfigError(
                f"principal {name!r}: a token is 1-4096 printable ASCII characters without spaces"
            )
        if name in names:
            raise ConfigError(f"principal {name!r} is given twice")
        if token in values:
            raise ConfigError(f"principal {name!r}: its token is another principal's too")
        names.add(name)
        values.add(token)
    return out


def parse_tokens(text: str, *, source: str = "tokens") -> tuple[tuple[str, str], ...]:
    """The principals of a tokens file: one ``name:token`` per line (blank lines and lines
    starting with ``#`` are skipped), or a single line holding a bare token (the principal
    :data:`DEFAULT_PRINCIPAL`). Raises :class:`ConfigError` naming ``source`` and the line
    (never the token)."""
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines:
        raise ConfigError(f"{source}: no token in it (expected NAME:TOKEN lines)")
    if len(lines) == 1 and ":" not in lines[0][1]:
        pairs = [(DEFAULT_PRINCIPAL, lines[0][1])]
    else:
        pairs = []
        for number, line in lines:
            name, sep, token = line.partition(":")
            if not sep:
                raise ConfigError(f"{source}, line {number}: expected NAME:TOKEN")
            pairs.append((name.strip(), token.strip()))
    try:
        return check_tokens(pairs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_tokens(path: str | Path) -> tuple[tuple[str, str], ...]:
    """:func:`parse_tokens` of the file at ``path`` (:class:`ConfigError` if unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read the tokens file {str(path)!r}: {reason}") from None
    return parse_tokens(text, source=str(path))


def authenticate(tokens: Iterable[tuple[str, bytes]], headers: Mapping[str, str]) -> str:
    """The name of the principal whose token ``headers`` carry (``Authorization: Bearer
    <token>``); :class:`MissingToken` or :class:`InvalidToken` (401) if none. Every token is
    compared, each in constant time, so the time taken does not say which one nearly
    matched."""
    value = headers.get("authorization", "")
    if not value:
        raise MissingToken("missing bearer token (Authorization: Bearer <token>)")
    scheme, _, given = value.partition(" ")
    presented = given.strip().encode()
    found: str | None = None
    for name, token in tokens:
        if hmac.compare_digest(presented, token) and found is None:
            found = name
    if scheme.lower() != "bearer" or found is None:
        raise InvalidToken("invalid bearer token")
    return found


def owned_key(principal: str | None, stream_id: str) -> str:
    """The store's key of the resumable stream ``stream_id`` of ``principal`` (``None``: auth is
    off, the id itself). Names hold no ``.``, so two principals never share a key."""
    return stream_id if principal is None else f"{principal}.{stream_id}"
