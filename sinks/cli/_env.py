"""What the command line reads from the environment (secrets that must not show in ``ps``)."""

from __future__ import annotations

import os
from typing import Final

__all__ = ["AUTH_TOKEN_ENV", "auth_token_from_env"]

AUTH_TOKEN_ENV: Final = "LLMPIPE_AUTH_TOKEN"
"""The bearer token of an llmpipe server: ``serve`` requires it (when no flag gives one),
``client`` sends it."""


def auth_token_from_env() -> str | None:
    """``$LLMPIPE_AUTH_TOKEN``, ``None`` when unset or empty."""
    return os.environ.get(AUTH_TOKEN_ENV) or None
