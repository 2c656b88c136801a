"""The ``llmpipe`` command line: the one place that wires producers, stores and sinks."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from pipeline import ConfigError, LLMPipeError, Pipeline, PipelineStatistics, Producer, Route, Stage
from pipeline.producers import ScriptedProducer
from pipeline.text import AdaptiveChunker

__all__ = ["Backend", "main", "open_backend"]

DEMO_TEXT = (
    "llmpipe streams a model's answer to the consumers that read it. Every buffer between the "
    "producer and a sink is bounded, in items and in bytes. When a consumer lags, its own "
    "policy decides: block, coalesce, spill, drop the oldest, or fail. Nothing is lost unless "
    "a policy says so, and cancelling the pipeline closes the upstream request at once."
)


PROVIDERS: Final = ("local", "openai", "openai-responses", "anthropic", "scripted")
DEFAULT_MODELS: Final = {
    "openai": "gpt-4o-mini",
    "openai-responses": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
}


def _add_provider_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose and configure the model (shared by ``stream`` and ``serve``)."""
    parser.add_argument(
        "--provider",
        choices=PROVIDERS,
        help="local (default: the embedded SmolLM2-135M), openai (Chat Completions; also any "
        "OpenAI-compatible server with --base-url), openai-responses, anthropic, scripted",
    )
    parser.add_argument("--model", help="model name (default depends on the provider)")
    parser.add_argument("--base-url", help="the provider's base URL (OpenAI-compatible servers)")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-tokens", type=int, default=256, help="output limit (default 256)")
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument(
        "--scripted",
        metavar="TEXT",
        nargs="?",
        const=DEMO_TEXT,
        help="play TEXT (default: a demo text) as a scripted model, word by word",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=40.0,
        help="scripted tokens per second (0 = as fast as possible; default 40)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmpipe", description="Stream LLM output to the consumers that read it."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    stream = sub.add_parser("stream", help="stream an answer to the terminal (and files)")
    stream.add_argument("prompt", nargs="?", default="", help="the prompt")
    _add_provider_options(stream)
    stream.add_argument("--out", metavar="FILE", help="also write the text to FILE (atomically)")
    stream.add_argument("--events", metavar="FILE", help="also write every event to FILE (JSONL)")
    stream.add_argument(
        "--chunk-ms",
        type=float,
        default=50.0,
        help="terminal display smoothing interval in ms (0 = print every delta)",
    )
    stream.add_argument(
        "--stats", action="store_true", help="print statistics to stderr at the end"
    )
    serve = sub.add_parser("serve", help="serve SSE, NDJSON and WebSocket streams over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    _add_provider_options(serve)
    serve.add_argument(
        "--store",
        metavar="URL",
        help="where resumable streams live: memory (default) or redis://HOST:PORT/DB",
    )
    serve.add_argument("--auth-token", help="require 'Authorization: Bearer TOKEN'")
    serve.add_argument(
        "--cors-origin", action="append", default=[], help="allow this origin (repeatable)"
    )
    serve.add_argument("--max-streams-per-client", type=int, default=8)
    serve.add_argument(
        "--max-generations-per-client",
        type=int,
        default=8,
        help="resumable generations (POST /v1/streams) one client may have running",
    )
    serve.add_argument("--heartbeat", type=float, default=15.0, help="seconds between comments")
    serve.add_argument(
        "--idle-cancel", type=float, default=60.0, help="cancel unread resumable streams after"
    )
    serve.add_argument("--shutdown-grace", type=float, default=5.0)
    sub.add_parser(
        "client",
        help="follow a stream of an llmpipe server (resumes with Last-Event-ID)",
        add_help=False,
    )
    sub.add_parser(
        "emulate",
        help="serve OpenAI/Anthropic-compatible streaming endpoints with a scripted reply",
        add_help=False,
    )
    return parser


def _provider_name(args: argparse.Namespace) -> str:
    if args.scripted is not None:
        return "scripted"
    if args.provider:
        return str(args.provider)
    if args.base_url:
        return "openai"
    return "local"


LOCAL_SYSTEM_PROMPT: Final = "You are a helpful assistant."


def _messages(
    args: argparse.Namespace, *, default_system: str | None = None
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = args.system or default_system
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": args.prompt or "Say hello."})
    return messages


@attrs.define(eq=False)
class Backend:
    """A configured model source: builds one producer per request, sharing one SDK client (and,
    for ``local``, one running llama.cpp server). Safe to use from many tasks."""

    name: str
    make_producer: Callable[[list[dict[str, Any]], str | None, int | None, float | None], Producer]
    default_system: str | None = None

    def producer(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Producer:
        msgs = [dict(m) for m in messages]
        if self.default_system and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.default_system})
        return self.make_producer(msgs, model, max_tokens, temperature)


def _split_system(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    system = "\n\n".join(m["content"] for m in messages if m.get("role") == "system") or None
    return system, [m for m in messages if m.get("role") != "system"]


@asynccontextmanager
async def open_backend(args: argparse.Namespace) -> AsyncIterator[Backend]:
    """The model source the options ask for, with whatever it needs running (the local server,
    the SDK client) for as long as the block lasts."""
    name = _provider_name(args)
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("--max-tokens must be >= 1")
    if name == "scripted":
        rate: float = args.rate
        if rate < 0:
            raise ConfigError("--rate must be >= 0")
        text = args.scripted if args.scripted is not None else DEMO_TEXT
        delay = 1.0 / rate if rate else 0.0
        yield Backend(name, lambda *_: ScriptedProducer.from_text(text, delay=delay))
        return
    from pipeline.producers import OpenAIChatProducer, OpenAIResponsesProducer, openai_client

    default_max = args.max_tokens
    default_temp = args.temperature
    if name == "local":
        from pipeline.producers._local import open_local_server

        async with open_local_server() as server:
            local = openai_client(base_url=server.base_url, api_key="local")
            async with local:

                def make_local(
                    msgs: list[dict[str, Any]], model: str | None, mt: int | None, t: float | None
                ) -> Producer:
                    return OpenAIChatProducer(
                        local,
                        model=server.model,
                        messages=msgs,
                        max_tokens=mt or default_max,
                        temperature=default_temp if t is None else t,
                    )

                # SmolLM2's chat template otherwise adds its own system prompt, with which the
                # 135M model tends to ramble; a plain one keeps answers on topic.
                yield Backend(name, make_local, default_system=LOCAL_SYSTEM_PROMPT)
        return
    default_model = args.model or DEFAULT_MODELS[name]
    if name == "anthropic":
        # Only here: the anthropic SDK is a large import the other providers never need.
        from pipeline.producers import AnthropicProducer, anthropic_client

        aclient = anthropic_client(base_url=args.base_url)
        async with aclient:

            def make_anthropic(
                msgs: list[dict[str, Any]], model: str | None, mt: int | None, t: float | None
            ) -> Producer:
                system, rest = _split_system(msgs)
                return AnthropicProducer(
                    aclient,
                    model=model or default_model,
                    messages=rest,
                    system=system,
                    max_tokens=mt or default_max or 1024,
                    temperature=default_temp if t is None else t,
                )

            yield Backend(name, make_anthropic)
        return
    oclient = openai_client(base_url=args.base_url)
    async with oclient:

        def make_openai(
            msgs: list[dict[str, Any]], model: str | None, mt: int | None, t: float | None
        ) -> Producer:
            if name == "openai-responses":
                system, rest = _split_system(msgs)
                return OpenAIResponsesProducer(
                    oclient,
                    model=model or default_model,
                    input=rest,
                    instructions=system,
                    max_output_tokens=mt or default_max,
                    temperature=default_temp if t is None else t,
                )
            return OpenAIChatProducer(
                oclient,
                model=model or default_model,
                messages=msgs,
                max_tokens=mt or default_max,
                temperature=default_temp if t is None else t,
            )

        yield Backend(name, make_openai)


def _summary(stats: PipelineStatistics) -> str:
    duration = (stats.ended_at or stats.started_at) - stats.started_at
    ttft = "-" if stats.time_to_first_text is None else f"{stats.time_to_first_text:.3f} s"
    return (
        f"[{stats.reason}: {stats.events_out} events, {stats.text_chars_out} chars in "
        f"{duration:.2f} s; first text after {ttft}; producer blocked "
        f"{stats.producer_blocked_seconds:.3f} s]"
    )


async def _stream(args: argparse.Namespace) -> int:
    from .. import EventLogSink, TerminalSink, TextFileSink

    stages: list[Stage] = []
    if args.chunk_ms > 0:
        stages.append(AdaptiveChunker(min_chars=1, interval=args.chunk_ms / 1000))
    routes: list[Route] = [Route(TerminalSink(), policy="coalesce")]
    if args.out:
        routes.append(Route(TextFileSink(args.out), policy="coalesce"))
    if args.events:
        routes.append(Route(EventLogSink(args.events), policy="spill"))
    async with open_backend(args) as backend:
        producer = backend.producer(_messages(args))
        stats = await Pipeline(producer, stages=stages, sinks=routes).run()
    if args.stats:
        print(_summary(stats), file=sys.stderr)
    return 0 if stats.reason in ("done", "consumer_gone") else 1


async def _serve(args: argparse.Namespace) -> int:
    from ..server import ServerConfig, StreamRequest, create_app, serve

    async with open_backend(args) as backend:

        @asynccontextmanager
        async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
            yield backend.producer(
                request.messages,
                model=request.model,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
            )

        config = ServerConfig(
            providers=(backend.name,),
            max_streams_per_client=args.max_streams_per_client,
            max_generations_per_client=args.max_generations_per_client,
            heartbeat_interval=args.heartbeat,
            idle_cancel_after=args.idle_cancel,
            auth_token=args.auth_token,
            cors_origins=tuple(args.cors_origin),
            shutdown_grace=args.shutdown_grace,
            store_url=args.store,
        )
        app = create_app(factory, config)

        async def until_signal() -> None:
            import signal

            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    return

        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(serve, app, args.host, args.port, shutdown_trigger=until_signal)
            )
            print(
                f"llmpipe serving {backend.name} on http://{args.host}:{port}/ "
                "(page at /, API under /v1)",
                file=sys.stderr,
                flush=True,
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmpipe`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulate"]:
        from pipeline.testing.emulator import main_emulate

        return main_emulate(argv[1:])
    if argv[:1] == ["client"]:
        from pipeline.client import main_client

        return main_client(argv[1:])
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "stream":
            return trio.run(_stream, args)
        if args.command == "serve":
            return trio.run(_serve, args)
    except LLMPipeError as exc:
        print(f"llmpipe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)  # pragma: no cover
