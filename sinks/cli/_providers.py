"""The options that choose and configure the model, shared by ``stream``, ``speak``,
``serve`` and ``batch``."""

from __future__ import annotations

import argparse
from contextlib import AbstractAsyncContextManager
from typing import Any

from pipeline import ConfigError
from pipeline.producers import DEMO_TEXT, PROVIDERS, Backend, RetryPolicy, open_backend

__all__ = ["add_provider_options", "backend_from_args", "messages_from_args"]


def add_provider_options(parser: argparse.ArgumentParser) -> None:
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
        "--threads",
        type=int,
        help="the local model's CPU threads (default 1: more only pay on cores nothing else "
        "uses; with a core busy elsewhere, 2 threads ran 25x slower than 1)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=40.0,
        help="scripted tokens per second (0 = as fast as possible; default 40)",
    )


def _provider_name(args: argparse.Namespace) -> str:
    if args.scripted is not None:
        return "scripted"
    if args.provider:
        return str(args.provider)
    if args.base_url:
        return "openai"
    return "local"


def backend_from_args(
    args: argparse.Namespace, *, retry: RetryPolicy | None = None
) -> AbstractAsyncContextManager[Backend]:
    """:func:`pipeline.producers.open_backend` for the options (``retry``: the producers'
    retries, see there); bad values are reported with the option's name
    (:class:`pipeline.ConfigError`), before anything starts."""
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("--max-tokens must be >= 1")
    if args.rate < 0:
        raise ConfigError("--rate must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    return open_backend(
        _provider_name(args),
        model=args.model,
        base_url=args.base_url,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        scripted_text=args.scripted,
        scripted_rate=args.rate,
        retry=retry,
        threads=args.threads,
    )


def messages_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The chat of a one-shot prompt: ``--system`` (if any), then the prompt."""
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt or "Say hello."})
    return messages
