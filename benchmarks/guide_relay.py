"""The comparison relay: an LLM streaming relay written the way the popular guides write it.

FastAPI + sse-starlette's ``EventSourceResponse`` on uvicorn (asyncio), the official ``openai``
SDK's ``AsyncOpenAI().chat.completions.create(stream=True)``, one SDK chunk object per token,
one SSE event per token. Nothing here is tuned: that is the point of the comparison.

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 python benchmarks/guide_relay.py --port 8001
    curl -N -X POST localhost:8001/chat -H 'content-type: application/json' -d '{"prompt":"hi"}'

Used by ``benchmarks/bench_capacity.py`` (``--loop asyncio --http h11``: plain uvicorn;
``--loop uvloop --http httptools``: what ``uvicorn[standard]`` picks, as users deploy it) and
``bench_cancel.py``; needs ``fastapi``, ``uvicorn`` and ``sse-starlette``.
"""

from __future__ import annotations

import argparse
import json
import os

import uvicorn
from fastapi import FastAPI
from openai import AsyncOpenAI
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

app = FastAPI()
client = AsyncOpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8081/v1"),
    api_key=os.environ.get("OPENAI_API_KEY", "x"),
)
MODEL = os.environ.get("RELAY_MODEL", "m")


class ChatRequest(BaseModel):
    prompt: str


@app.post("/chat")
async def chat(req: ChatRequest) -> EventSourceResponse:
    async def event_generator():  # type: ignore[no-untyped-def]
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": req.prompt}],
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield {
                    "event": "text",
                    "data": json.dumps({"text": chunk.choices[0].delta.content}),
                }
        yield {"event": "done", "data": "{}"}

    return EventSourceResponse(event_generator())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--loop", default="auto", help="uvicorn's: auto, asyncio, uvloop")
    parser.add_argument("--http", default="auto", help="uvicorn's: auto, h11, httptools")
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop=args.loop,
        http=args.http,
        log_level="warning",
        access_log=False,
    )
