"""Newline-delimited JSON for llmpipe events: one event per line (``application/x-ndjson``).

Pure and synchronous: safe from any task or thread.
"""

from __future__ import annotations

from typing import Final

from .. import Event, event_to_json

__all__ = ["NDJSON_CONTENT_TYPE", "ndjson_line"]

NDJSON_CONTENT_TYPE: Final = "application/x-ndjson"


def ndjson_line(event: Event) -> bytes:
    """``event`` as one line of compact JSON (UTF-8), ending with ``\\n``.

    :func:`pipeline.event_to_json` escapes line breaks inside strings, so the line never
    contains a raw newline; parse it back with :func:`pipeline.event_from_json`.
    """
    return (event_to_json(event) + "\n").encode("utf-8")
