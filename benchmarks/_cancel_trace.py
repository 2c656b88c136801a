"""``llmpipe serve`` with timestamps on its disconnect path (``bench_cancel.py --trace``).

    python benchmarks/_cancel_trace.py OUT.json serve --provider openai ...

Runs ``sinks.cli`` with these probes patched in (``CLOCK_MONOTONIC`` ns, comparable with the
client's and the upstream's stamps), and writes them to ``OUT.json`` when the server exits:

* ``eof``: hypercorn's read loop got the client's EOF (``receive_some`` returned ``b""`` or
  failed), by the client's port (the port's last one before ``disconnect``);
* ``disconnect``: the app's ``receive()`` returned ``http.disconnect``, by request id (read
  from the request's body, ``cancel-N``), with the client's port;
* ``up_close``: a socket opened for that request (its upstream connection) was closed;
* ``steps``: every trio task step of at least 0.15 ms (start, end, task name, CPU ns);
* ``gc``: each collection of the cyclic GC (start, end, generation, CPU ns it took);
* ``*_cpu``: the process's main thread's CPU time (``thread_time_ns``) at that probe, so a span
  can be told apart as work or waiting (for a CPU, or on other tasks).

A debugging aid, not part of llmpipe: it patches hypercorn and trio in this process only.
"""

from __future__ import annotations

import atexit
import contextvars
import gc
import json
import os
import re
import runpy
import sys
import time
from typing import Any

import hypercorn.app_wrappers
import hypercorn.trio.tcp_server
import trio
from hypercorn.events import Closed, RawData

_ID = re.compile(rb"cancel-(\d+)")
_REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "cancel_trace_request", default=None
)
requests: dict[str, dict[str, Any]] = {}
eofs: dict[int, list[int]] = {}
collections: list[tuple[int, int, int, int]] = []
_gc_start = _gc_cpu = 0


def now() -> int:
    return time.monotonic_ns()


def cpu() -> int:
    return time.thread_time_ns()


garbage: dict[str, int] = {}
SAMPLE = 150  # after this many requests, one young collection's garbage is tallied by type


def _gc(phase: str, info: dict[str, int]) -> None:
    global _gc_start, _gc_cpu
    sample = info["generation"] == 0 and len(requests) >= SAMPLE and not garbage
    if phase == "start" and sample:
        garbage["(sampling)"] = 1
    sample = sample or (phase == "stop" and garbage.get("(sampling)") == 1)
    if phase == "start":
        if sample:
            gc.set_debug(gc.DEBUG_SAVEALL)
            young = gc.get_objects(generation=0)
            garbage["(young objects)"] = len(young)
            refs: dict[str, int] = {}
            for obj in young:
                name = "refs " + type(obj).__qualname__
                refs[name] = refs.get(name, 0) + len(gc.get_referents(obj))
            garbage.update(sorted(refs.items(), key=lambda kv: -kv[1])[:8])
            del young
        _gc_start, _gc_cpu = now(), cpu()
    else:
        collections.append((_gc_start, now(), info["generation"], cpu() - _gc_cpu))
        if sample:
            gc.set_debug(0)
            for obj in gc.garbage:
                name = type(obj).__qualname__
                if isinstance(obj, type(_gc.__code__)) or hasattr(obj, "f_code"):
                    name += " " + getattr(obj, "f_code", obj).co_qualname
                garbage[name] = garbage.get(name, 0) + 1
            garbage["(total)"] = len(gc.garbage)
            garbage["(sampling)"] = 0
            gc.garbage.clear()


steps: list[tuple[int, int, str, int]] = []
STEP_NS = int(os.environ.get("CANCEL_TRACE_STEP_NS", "150000"))


class _Steps(trio.abc.Instrument):
    """Each task step of at least ``STEP_NS`` (start, end, task name, CPU ns)."""

    def __init__(self) -> None:
        self.start = self.cpu = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.start, self.cpu = now(), cpu()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        end = now()
        if end - self.start >= STEP_NS:
            steps.append((self.start, end, task.name, cpu() - self.cpu))


def install() -> None:
    wrapped = hypercorn.app_wrappers.ASGIWrapper.__call__
    steps_on: list[bool] = []

    async def asgi_call(self: Any, scope: Any, receive: Any, send: Any, *rest: Any) -> None:
        if scope.get("type") != "http":
            return await wrapped(self, scope, receive, send, *rest)
        if not steps_on:
            steps_on.append(True)
            trio.lowlevel.add_instrument(_Steps())
        rec: dict[str, Any] = {"port": (scope.get("client") or ("", 0))[1]}
        _REQUEST.set(rec)

        async def traced_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                m = _ID.search(message.get("body", b""))
                if m:
                    requests[m.group(1).decode()] = rec
            elif message["type"] == "http.disconnect":
                rec.setdefault("disconnect", now())
                rec.setdefault("disconnect_cpu", cpu())
            return message

        return await wrapped(self, scope, traced_receive, send, *rest)

    hypercorn.app_wrappers.ASGIWrapper.__call__ = asgi_call  # type: ignore[method-assign,assignment]

    async def read_data(self: Any) -> None:
        try:
            port = self.stream.socket.getpeername()[1]
        except (AttributeError, OSError):
            port = 0
        while True:
            try:
                data = await self.stream.receive_some(hypercorn.trio.tcp_server.MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                eofs.setdefault(port, []).append(now())
                break
            else:
                if data == b"":
                    eofs.setdefault(port, []).append(now())
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
        await self.protocol.handle(Closed())

    hypercorn.trio.tcp_server.TCPServer._read_data = read_data  # type: ignore[method-assign]

    closing = trio.SocketStream.aclose

    async def aclose(self: trio.SocketStream) -> None:
        rec = _REQUEST.get()
        if rec is not None:
            rec.setdefault("up_close", now())
            rec.setdefault("up_close_cpu", cpu())
        await closing(self)

    trio.SocketStream.aclose = aclose  # type: ignore[method-assign]
    gc.callbacks.append(_gc)
    if os.environ.get("CANCEL_TRACE_GC"):  # e.g. "2000,50,10": instead of GC_THRESHOLD
        threshold = tuple(int(n) for n in os.environ["CANCEL_TRACE_GC"].split(","))
        setting = gc.set_threshold
        gc.set_threshold = lambda *_: setting(*threshold)


def dump(path: str) -> None:
    for rec in requests.values():
        # The port's last EOF before the app heard of it (ports are reused).
        seen = [t for t in eofs.get(rec["port"], []) if t <= rec.get("disconnect", 0)]
        if seen:
            rec["eof"] = max(seen)
    with open(path, "w") as f:
        json.dump({"requests": requests, "gc": collections, "steps": steps, "garbage": garbage}, f)


def main() -> None:
    out, *argv = sys.argv[1:]
    install()
    atexit.register(dump, out)
    sys.argv = ["llmpipe", *argv]
    try:
        runpy.run_module("sinks.cli", run_name="__main__")
    finally:
        dump(out)


if __name__ == "__main__":
    main()
