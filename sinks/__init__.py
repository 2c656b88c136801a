"""Consumers of llmpipe events: terminal, files (and, as they land, SSE, WebSocket, speech)."""

from pipeline.packaging import fixup_module_metadata as _fixup_module_metadata

from .files import EventLogSink as EventLogSink
from .files import TextFileSink as TextFileSink
from .terminal import TerminalSink as TerminalSink

__all__ = ["EventLogSink", "TerminalSink", "TextFileSink"]

_fixup_module_metadata(__name__, globals())
