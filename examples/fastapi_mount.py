"""Mount llmpipe's streaming app under ``/llm`` in an existing FastAPI service, served on trio.

    python examples/fastapi_mount.py            # self-test: start on a free port, call
                                                # /hello and /llm/v1/stream, print, exit 0
    python examples/fastapi_mount.py --serve    # serve on 127.0.0.1:8000 until Ctrl-C
    curl -N -X POST localhost:8000/llm/v1/stream -H 'content-type: application/json' \\
         -d '{"prompt": "hi"}'

Three things to get right when mounting:

1. **Lifespan.** Starlette/FastAPI do NOT run a mounted sub-app's lifespan. llmpipe's app
   needs its lifespan: it opens the stream store and the nursery that runs resumable
   generations (``POST /llm/v1/streams``) and the detached socket writes of live streams.
   So the parent's lifespan enters the child's: ``llm_app.router.lifespan_context(llm_app)``.
   Without it, ``/llm/v1/streams`` answers 503 "not_ready".
2. **trio.** llmpipe's app runs on trio, so the whole service runs on hypercorn's trio worker
   (here in-process with ``sinks.server.serve``; or ``hypercorn --worker-class trio
   examples.fastapi_mount:app``). FastAPI itself is anyio-based and runs on trio unchanged;
   ``async def`` routes must not use asyncio-only libraries.
3. **Graceful shutdown.** ``sinks.server.serve`` finds llmpipe's runtime only on an app made by
   ``create_app``; with a parent app, call ``get_runtime(llm_app).begin_shutdown()`` yourself
   when the shutdown starts, so open streams end with a retryable ``shutdown`` error event
   instead of being cut (done below in ``until_signal``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import trio
from fastapi import FastAPI

from pipeline import Producer
from pipeline.producers import ScriptedProducer
from sinks.server import ServerConfig, StreamRequest, create_app, get_runtime, serve


@asynccontextmanager
async def scripted_factory(request: StreamRequest) -> AsyncIterator[Producer]:
    """One producer per request. A real service would return ``OpenAIChatProducer(client, ...)``
    built on one shared SDK client: ``pipeline.producers.open_backend`` gives one, and a
    ``Backend`` is itself a factory: ``create_app(backend, config)``."""
    prompt = request.messages[-1]["content"]
    yield ScriptedProducer.from_text(
        f"You said: {prompt}. This answer streams word by word.", delay=0.01
    )


def build_app() -> FastAPI:
    """The existing service, with llmpipe's app mounted under ``/llm``."""
    llm_app = create_app(scripted_factory, ServerConfig(max_streams_per_client=64))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The service's own start-up/shutdown goes here, around the child's lifespan.
        async with llm_app.router.lifespan_context(llm_app):
            yield

    app = FastAPI(title="my service", lifespan=lifespan)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"message": "hello from the parent app"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.mount("/llm", llm_app)
    app.state.llm_app = llm_app
    return app


app = build_app()


async def self_test(app: FastAPI) -> int:
    """Serve on a free port, call both apps over real HTTP, print what came back."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            hello = await client.get("/hello")
            hello.raise_for_status()
            print(f"GET /hello -> {hello.status_code} {hello.json()}")
            text: list[str] = []
            kinds: list[str] = []
            async with client.stream(
                "POST", "/llm/v1/stream", json={"prompt": "mounting llmpipe"}
            ) as response:
                response.raise_for_status()
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event:
                        kinds.append(event)
                        data = json.loads(line[5:])
                        if event == "text":
                            text.append(data["text"])
            print(f"POST /llm/v1/stream -> {response.status_code}, events: {' '.join(kinds)}")
            print(f"streamed text: {''.join(text)}")
            # The child's lifespan ran: resumable streams (store + nursery) work.
            created = await client.post("/llm/v1/streams", json={"prompt": "resumable"})
            print(f"POST /llm/v1/streams -> {created.status_code}")
        nursery.cancel_scope.cancel()
    ok = hello.status_code == 200 and bool(text) and kinds[-1:] == ["done"]
    return 0 if ok and created.status_code == 201 else 1


async def serve_forever(app: FastAPI, host: str, port: int) -> None:
    llm_app = app.state.llm_app

    async def until_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        get_runtime(llm_app).begin_shutdown()  # see point 3 in the module docstring

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve, app, host, port, shutdown_trigger=until_signal))
        print(f"serving on http://{host}:{bound}/hello and /llm/v1/stream", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--self-test", action="store_true", help="the default without --serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(serve_forever, app, args.host, args.port)
        return 0
    return trio.run(self_test, app)


if __name__ == "__main__":
    sys.exit(main())
