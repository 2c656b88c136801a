"""Speech: text-to-speech engines fed at the listener's pace, and exactly what was heard.

Contracts in :mod:`sinks.speech._types`: :class:`SpeechEngine` (text in, :class:`AudioChunk`
with :class:`WordMark` out), :class:`AudioSink` (player, WAV, raw PCM).
"""

from pipeline.packaging import fixup_module_metadata as _fixup_module_metadata

from ._audio import PcmWriter as PcmWriter
from ._audio import PlaybackPosition as PlaybackPosition
from ._audio import Player as Player
from ._audio import PlayerStatistics as PlayerStatistics
from ._audio import WavWriter as WavWriter
from ._espeak import EspeakEngine as EspeakEngine
from ._openai_tts import OpenAISpeechEngine as OpenAISpeechEngine
from ._scripted import ScriptedSpeechEngine as ScriptedSpeechEngine
from ._speaker import Conversation as Conversation
from ._speaker import HeardText as HeardText
from ._speaker import Message as Message
from ._speaker import PlaybackClock as PlaybackClock
from ._speaker import Speaker as Speaker
from ._speaker import SpeakerStatistics as SpeakerStatistics
from ._types import SAMPLE_WIDTH as SAMPLE_WIDTH
from ._types import AudioChunk as AudioChunk
from ._types import AudioSink as AudioSink
from ._types import EmitAudio as EmitAudio
from ._types import SpeechEngine as SpeechEngine
from ._types import WordMark as WordMark

__all__ = [
    "SAMPLE_WIDTH",
    "AudioChunk",
    "AudioSink",
    "Conversation",
    "EmitAudio",
    "EspeakEngine",
    "HeardText",
    "Message",
    "OpenAISpeechEngine",
    "PcmWriter",
    "PlaybackClock",
    "PlaybackPosition",
    "Player",
    "PlayerStatistics",
    "ScriptedSpeechEngine",
    "Speaker",
    "SpeakerStatistics",
    "SpeechEngine",
    "WavWriter",
    "WordMark",
]

_fixup_module_metadata(__name__, globals())
