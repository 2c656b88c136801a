"""A configured model source, shared by every request of a program: :func:`open_backend`.

What ``llmpipe stream`` and ``llmpipe serve`` both need, and what an application that mounts
:func:`sinks.server.create_app` needs too: pick a provider by name, start what it needs (the
embedded llama.cpp server, one SDK client with its connection pool) once, and build one
producer per request from it::

    async with open_backend("openai", model="gpt-4o-mini") as backend:
        producer = backend.producer([{"role": "user", "content": "Hi"}])
        app = create_app(backend, ServerConfig(providers=(backend.name,)))  # or per request
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Protocol

import attrs

from .. import ConfigError, Producer
from ._base import RetryPolicy
from ._convert import anthropic_messages, anthropic_tools, responses_input, responses_tools
from ._scripted import ScriptedProducer

__all__ = [
    "DEFAULT_MODELS",
    "DEMO_TEXT",
    "PROVIDERS",
    "Backend",
    "ProducerRequest",
    "open_backend",
]

PROVIDERS: Final = ("local", "openai", "openai-responses", "anthropic", "scripted")
"""The provider names :func:`open_backend` knows."""

DEFAULT_MODELS: Final[Mapping[str, str]] = {
    "openai": "gpt-4o-mini",
    "openai-responses": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
}
"""The model each hosted provider uses when none is given."""

DEMO_TEXT: Final = (
    "llmpipe streams a model's answer to the consumers that read it. Every buffer between the "
    "producer and a sink is bounded, in items and in bytes. When a consumer lags, its own "
    "policy decides: block, coalesce, spill, drop the oldest, or fail. Nothing is lost unless "
    "a policy says so, and cancelling the pipeline closes the upstream request at once."
)
"""What the ``scripted`` provider plays when it is given no text."""

LOCAL_SYSTEM_PROMPT: Final = "You are a helpful assistant."

_Tools = Sequence[Mapping[str, Any]]
_MakeProducer = Callable[
    [list[dict[str, Any]], str | None, int | None, float | None, _Tools], Producer
]


class ProducerRequest(Protocol):
    """What :meth:`Backend.__call__` reads of a request (``sinks.server.StreamRequest`` is one)."""

    @property
    def messages(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def model(self) -> str | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def tools(self) -> Sequence[Mapping[str, Any]]: ...


@attrs.define(eq=False)
class Backend:
    """A configured model source: builds one producer per request, sharing one SDK client (and,
    for ``local``, one running llama.cpp server). Safe to use from many tasks; valid only inside
    the :func:`open_backend` block that made it.

    Calling it with a request (anything with ``messages``, ``model``, ``max_tokens``,
    ``temperature`` and ``tools``) gives an async context manager holding that request's
    producer, which is the shape of a ``sinks.server.ProducerFactory``:
    ``create_app(backend, config)``.
    """

    name: str
    _make_producer: _MakeProducer
    default_system: str | None = None

    def producer(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> Producer:
        """A producer for one request. ``None`` keeps what :func:`open_backend` was given.

        ``messages`` and ``tools`` are in the Chat Completions form (tool calls and tool
        results included); the Anthropic and Responses backends convert them
        (``_convert.py``); ``scripted`` ignores both. The backend's default system prompt (if
        any) is put first unless ``messages`` has one.
        """
        msgs = [dict(m) for m in messages]
        if self.default_system and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.default_system})
        return self._make_producer(msgs, model, max_tokens, temperature, tools)

    def __call__(self, request: ProducerRequest) -> AbstractAsyncContextManager[Producer]:
        return _held(
            self.producer(
                request.messages,
                model=request.model,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                tools=request.tools,
            )
        )


@asynccontextmanager
async def _held(producer: Producer) -> AsyncIterator[Producer]:
    yield producer


@asynccontextmanager
async def open_backend(
    provider: str = "local",
    *,
    model: str | None = None,
    base_url: str | None = None,
    max_tokens: int | None = 256,
    temperature: float | None = None,
    scripted_text: str | None = None,
    scripted_rate: float = 40.0,
    retry: RetryPolicy | None = None,
    threads: int | None = None,
) -> AsyncIterator[Backend]:
    """The model source ``provider`` names (one of :data:`PROVIDERS`), with whatever it needs
    running for as long as the block lasts.

    ``local`` starts the embedded SmolLM2-135M on llama.cpp (the ``local`` extra); ``openai``
    is the Chat Completions API (or any OpenAI-compatible server at ``base_url``: vLLM, Ollama,
    llama.cpp); ``openai-responses`` the Responses API; ``anthropic`` the Messages API; and
    ``scripted`` plays ``scripted_text`` (default :data:`DEMO_TEXT`) word by word at
    ``scripted_rate`` tokens per second (0: as fast as possible), with no model at all.
    ``model``, ``max_tokens`` and ``temperature`` are the defaults of every producer; a request
    may override them. ``retry`` is every SDK producer's :class:`RetryPolicy` (``None``: the
    producers' default); a caller that retries itself, as a batch that must count every request
    against a rate limit does, passes ``RetryPolicy(max_attempts=1)``. API keys come from the
    SDKs' usual environment variables. ``threads``
    is the local model's llama.cpp thread count (default 1: the measured one that holds up when
    other processes want the cores); other
    providers ignore it.

    Raises :class:`pipeline.ConfigError` for an unknown provider or an invalid value, before
    anything is started.
    """
    if provider not in PROVIDERS:
        raise ConfigError(f"provider: unknown {provider!r} (one of: {', '.join(PROVIDERS)})")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError("max_tokens must be >= 1")
    if threads is not None and threads < 1:
        raise ConfigError("threads must be >= 1")
    if provider == "scripted":
        if scripted_rate < 0:
            raise ConfigError("scripted_rate must be >= 0")
        text = DEMO_TEXT if scripted_text is None else scripted_text
        delay = 1.0 / scripted_rate if scripted_rate else 0.0
        yield Backend(provider, lambda *_: ScriptedProducer.from_text(text, delay=delay))
        return
    from ._openai import OpenAIChatProducer, OpenAIResponsesProducer, openai_client

    if provider == "local":
        from ._local import DEFAULT_LOCAL_THREADS, open_local_server

        async with open_local_server(n_threads=threads or DEFAULT_LOCAL_THREADS) as server:
            local = openai_client(base_url=server.base_url, api_key="local")
            async with local:

                def make_local(
                    msgs: list[dict[str, Any]],
                    _model: str | None,
                    mt: int | None,
                    t: float | None,
                    tools: _Tools,
                ) -> Producer:
                    return OpenAIChatProducer(
                        local,
                        model=server.model,
                        messages=msgs,
                        max_tokens=mt or max_tokens,
                        temperature=temperature if t is None else t,
                        tools=[dict(tool) for tool in tools] or None,
                        retry=retry,
                    )

                # SmolLM2's chat template otherwise adds its own system prompt, with which the
                # 135M model tends to ramble; a plain one keeps answers on topic.
                yield Backend(provider, make_local, default_system=LOCAL_SYSTEM_PROMPT)
        return
    default_model = model or DEFAULT_MODELS[provider]
    if provider == "anthropic":
        # Only here: the anthropic SDK is a large import the other providers never need.
        from ._anthropic import AnthropicProducer, anthropic_client

        aclient = anthropic_client(base_url=base_url)
        async with aclient:

            def make_anthropic(
                msgs: list[dict[str, Any]],
                m: str | None,
                mt: int | None,
                t: float | None,
                tools: _Tools,
            ) -> Producer:
                system, rest = anthropic_messages(msgs)
                return AnthropicProducer(
                    aclient,
                    model=m or default_model,
                    messages=rest,
                    system=system,
                    max_tokens=mt or max_tokens or 1024,
                    temperature=temperature if t is None else t,
                    tools=anthropic_tools(tools) if tools else None,
                    retry=retry,
                )

            yield Backend(provider, make_anthropic)
        return
    oclient = openai_client(base_url=base_url)
    async with oclient:

        def make_openai(
            msgs: list[dict[str, Any]],
            m: str | None,
            mt: int | None,
            t: float | None,
            tools: _Tools,
        ) -> Producer:
            if provider == "openai-responses":
                system, rest = responses_input(msgs)
                return OpenAIResponsesProducer(
                    oclient,
                    model=m or default_model,
                    input=rest,
                    instructions=system,
                    max_output_tokens=mt or max_tokens,
                    temperature=temperature if t is None else t,
                    tools=responses_tools(tools) or None,
                    retry=retry,
                )
            return OpenAIChatProducer(
                oclient,
                model=m or default_model,
                messages=msgs,
                max_tokens=mt or max_tokens,
                temperature=temperature if t is None else t,
                tools=[dict(tool) for tool in tools] or None,
                retry=retry,
            )

        yield Backend(provider, make_openai)
