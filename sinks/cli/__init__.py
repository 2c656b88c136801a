"""The ``llmpipe`` command line: the one place that wires producers, stores and sinks together.

:func:`main` is the console script; :class:`ExitCode` the exit codes of every subcommand.
"""

from pipeline.packaging import fixup_module_metadata as _fixup_module_metadata

from ._main import HINTS as HINTS
from ._main import IO as IO
from ._main import ExitCode as ExitCode
from ._main import build_parser as build_parser
from ._main import main as main

__all__ = ["HINTS", "IO", "ExitCode", "build_parser", "main"]

_fixup_module_metadata(__name__, globals())
