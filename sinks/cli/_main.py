"""``llmpipe``: one argparse tree for every subcommand, one ``trio.run``, one table of exit codes.

Each subcommand lives in its own module (``_stream``, ``_speak``, ``_serve``, ``_client``,
``_emulate``, ``_batch``, ``_worker``)
with two functions: ``add_parser(subparsers)`` declares its options, ``run(args, io)`` is the
async body that :func:`main` runs under ``trio.run``. Errors are printed here, once, as one line
with a hint (:data:`HINTS`), and turned into an :class:`ExitCode`.
"""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn, TextIO

import attrs
import trio

from pipeline import (
    ConfigError,
    LLMPipeError,
    MissingExtraError,
    ProducerConnectionError,
    ProducerStatusError,
    ProducerTimeout,
    lone_exception,
)

from . import _batch, _client, _emulate, _serve, _speak, _stream, _worker

__all__ = ["HINTS", "ExitCode", "IO", "main"]


class ExitCode(enum.IntEnum):
    """What ``llmpipe`` exits with, for every subcommand."""

    OK = 0
    """The command did its job (a stream ended with ``done``, or its reader went away)."""
    STREAM_FAILED = 1
    """A stream started but ended with an ``error`` event, or without an end."""
    ERROR = 2
    """Bad usage, or the command could not start or go on (one line on stderr says why)."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT) before the command ended by itself."""


HINTS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (MissingExtraError, ""),  # its message says what to install
    (ConfigError, "see 'llmpipe {command} --help'"),
    (ProducerConnectionError, "is the provider reachable? check --provider and --base-url"),
    (ProducerTimeout, "the provider did not answer in time; try again"),
    (ProducerStatusError, "check the API key, --model and --base-url"),
    (LLMPipeError, "see 'llmpipe {command} --help'"),
)
"""The hint printed after an error's message, by the error's type (the first match wins)."""


@attrs.frozen
class IO:
    """Where a subcommand writes: its output and its messages."""

    out: TextIO
    err: TextIO


class UsageError(Exception):
    """Bad command line: argparse's own complaint, as one line."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised (so that :func:`main` prints them as one line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


_SUBCOMMANDS: Final = (_stream, _speak, _serve, _client, _emulate, _batch, _worker)

Run = Callable[[argparse.Namespace, IO], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``llmpipe {stream,speak,serve,client,emulate,batch,worker}
    ...``."""
    parser = _Parser(prog="llmpipe", description="Stream LLM output to the consumers that read it.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in _SUBCOMMANDS:
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def _hint(exc: BaseException, args: argparse.Namespace) -> str:
    """The hint for ``exc`` (:data:`HINTS`), made specific to the options given where that
    tells the user more: the URL a connection was refused at, a ``--base-url`` without
    ``/v1`` that answered 404."""
    command = str(args.command)
    base_url = getattr(args, "base_url", None)
    if base_url and isinstance(exc, ProducerConnectionError):
        return f"is {base_url} reachable? check --base-url"
    if base_url and isinstance(exc, ProducerStatusError) and exc.status_code == 404:
        if not base_url.rstrip("/").endswith("/v1"):
            return (
                f"OpenAI-compatible servers answer under /v1: try --base-url "
                f"{base_url.rstrip('/')}/v1"
            )
        return f"check --base-url {base_url} and --model"
    for cls, hint in HINTS:
        if isinstance(exc, cls):
            return hint.format(command=command)
    return ""


def _say(err: TextIO, prog: str, message: str, hint: str) -> None:
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"{prog}: {line}" + (f" — {hint}" if hint else ""), file=err, flush=True)


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of the ``llmpipe`` console script (and ``python -m sinks.cli``).

    Returns an :class:`ExitCode`. ``stdout``/``stderr`` default to the process's (tests pass
    their own). Runs one ``trio.run`` for the subcommand.
    """
    io = IO(sys.stdout if stdout is None else stdout, sys.stderr if stderr is None else stderr)
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:
        # argparse reports unknown options from the top parser: name the subcommand's help.
        prog = exc.prog
        if prog == parser.prog and args_list[:1] and args_list[0] in {m.NAME for m in _SUBCOMMANDS}:
            prog = f"{prog} {args_list[0]}"
        _say(io.err, "llmpipe", str(exc), f"see '{prog} --help'")
        return ExitCode.ERROR
    run: Run = args.run
    try:
        return int(trio.run(run, args, io))
    except BaseException as raised:
        failure = lone_exception(raised)
        if isinstance(failure, LLMPipeError):
            _say(io.err, "llmpipe", str(failure), _hint(failure, args))
            return ExitCode.ERROR
        if isinstance(failure, OSError) and not isinstance(failure, BrokenPipeError):
            # A file or a socket the command was given (paths and ports are checked where they
            # can be; this is what the system said when it was not).
            _say(io.err, "llmpipe", str(failure), f"see 'llmpipe {args.command} --help'")
            return ExitCode.ERROR
        if isinstance(failure, KeyboardInterrupt):
            return ExitCode.INTERRUPTED
        if isinstance(failure, BrokenPipeError):  # the reader went away (| head): not our failure
            return ExitCode.OK
        raise
