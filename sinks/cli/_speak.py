"""``llmpipe speak PROMPT``: the answer spoken by espeak-ng at the listener's pace."""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import trio

from pipeline import ConfigError, Pipeline, Route

from ._providers import add_provider_options, backend_from_args, messages_from_args

if TYPE_CHECKING:
    from ..speech import Speaker, SpeakerStatistics
    from ._main import IO

__all__ = ["NAME", "add_parser", "run"]

NAME = "speak"

_PRINT_INTERVAL = 0.05  # how often the text heard so far is printed


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        NAME,
        help="speak an answer with espeak-ng at the listener's pace",
        description="Speak a model's answer with espeak-ng, paced by the audio queued ahead of "
        "playback. Prints the text as it is heard, then time to first audio, the engine's "
        "real-time factor and underruns. Plays in real time (silently, unless --pcm sends the "
        "audio somewhere): llmpipe speak 'Hi' --pcm - | aplay -f S16_LE -r 22050",
    )
    parser.add_argument("prompt", nargs="?", default="", help="the prompt")
    add_provider_options(parser)
    parser.add_argument("--wav", metavar="FILE", help="also write the audio to FILE (WAV)")
    parser.add_argument(
        "--pcm",
        metavar="FILE",
        help="play into FILE as raw s16le mono PCM (22050 Hz with espeak-ng, 24000 with openai; "
        "'-': standard output, and the text then goes to standard error)",
    )
    parser.add_argument(
        "--engine",
        choices=("espeak", "openai"),
        default="espeak",
        help="espeak (default: espeak-ng, embedded) or openai (the speech API: OPENAI_API_KEY; "
        "24000 Hz PCM, no word marks, so what was heard is estimated)",
    )
    parser.add_argument(
        "--tts-base-url", help="the speech API's base URL (--engine openai; any compatible server)"
    )
    parser.add_argument("--voice", help="voice (default: en for espeak-ng, alloy for openai)")
    parser.add_argument("--wpm", type=int, default=175, help="espeak-ng words per minute (175)")
    parser.add_argument(
        "--code-blocks",
        choices=("skip", "read"),
        default="skip",
        help="what to do with fenced code blocks (default: skip them)",
    )
    return parser


def _summary(stats: SpeakerStatistics) -> str:
    ttfa = "-" if stats.time_to_first_audio is None else f"{stats.time_to_first_audio:.3f} s"
    rtf = "-" if stats.realtime_factor is None else f"{stats.realtime_factor:.4f}"
    return (
        f"[spoken: {stats.played_seconds:.2f} s of audio, first audio after {ttfa}, "
        f"engine real-time factor {rtf}, {stats.engine_requests} engine requests, "
        f"{stats.underruns} underruns ({stats.underrun_seconds:.3f} s)]"
    )


async def _print_heard(speaker: Speaker, out: Any, done: trio.Event) -> None:
    printed = 0
    while True:
        finished = done.is_set()
        text = speaker.heard().text
        if len(text) > printed:
            out.write(text[printed:])
            out.flush()
            printed = len(text)
        if finished:
            return
        with trio.move_on_after(_PRINT_INTERVAL):
            await done.wait()


async def run(args: argparse.Namespace, io: IO) -> int:
    from pipeline.text import SpeakableStream

    from ..speech import (
        EspeakEngine,
        OpenAISpeechEngine,
        PcmWriter,
        Player,
        Speaker,
        SpeechEngine,
        WavWriter,
    )

    if not 80 <= args.wpm <= 450:
        raise ConfigError("--wpm must be between 80 and 450")
    text_out = io.err if args.pcm == "-" else io.out
    cleaner = SpeakableStream(code_blocks=args.code_blocks)
    async with AsyncExitStack() as stack:
        engine: SpeechEngine
        if args.engine == "openai":
            from pipeline.producers import openai_client

            client = await stack.enter_async_context(openai_client(base_url=args.tts_base_url))
            engine = OpenAISpeechEngine(client, voice=args.voice or "alloy")
        else:
            engine = EspeakEngine(voice=args.voice or "en", rate=args.wpm)
        outputs = []
        if args.wav:
            outputs.append(await stack.enter_async_context(WavWriter(args.wav)))
        device = None
        if args.pcm == "-":
            device = PcmWriter(sys.stdout.buffer)
        elif args.pcm:
            stream = await trio.to_thread.run_sync(open, args.pcm, "wb")
            stack.callback(stream.close)
            device = PcmWriter(stream)
        player = Player(output=device)
        speaker = Speaker(
            engine, outputs=outputs, player=player, transform=lambda s: cleaner.feed(s).text
        )
        async with backend_from_args(args) as backend:
            producer = backend.producer(messages_from_args(args))
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_print_heard, speaker, text_out, done)
                try:
                    stats = await Pipeline(
                        producer, sinks=[Route(speaker, policy="coalesce")]
                    ).run()
                finally:
                    done.set()
        await player.aclose()
    text_out.write("\n")
    print(_summary(speaker.statistics()), file=io.err)
    return 0 if stats.reason in ("done", "consumer_gone") else 1
