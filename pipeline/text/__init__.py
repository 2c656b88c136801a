"""Text for people and speech engines: sentence segmentation, grapheme-safe cuts, chunking.

:class:`SentenceBuffer` is the incremental, chunk-invariant, lossless sentence segmenter;
:class:`SentenceStage` runs it as a pipeline stage (with a stall deadline) and
:class:`AdaptiveChunker` batches deltas for displays; :func:`speakable` and
:class:`SpeakableStream` turn sentences (markdown, URLs, symbols) into what a voice should say,
with offsets back to the original (:func:`heard_original`). Pure text: no I/O, no trio; the stages
take their time from the ``now`` the runner gives them.
"""

from ..packaging import fixup_module_metadata as _fixup_module_metadata
from ._chunker import AdaptiveChunker as AdaptiveChunker
from ._sentences import SentenceBuffer as SentenceBuffer
from ._speakable import CodeBlocks as CodeBlocks
from ._speakable import SpeakableStream as SpeakableStream
from ._speakable import Spoken as Spoken
from ._speakable import SpokenRun as SpokenRun
from ._speakable import heard_original as heard_original
from ._speakable import speakable as speakable
from ._stages import SentenceStage as SentenceStage

__all__ = [
    "AdaptiveChunker",
    "CodeBlocks",
    "SentenceBuffer",
    "SentenceStage",
    "SpeakableStream",
    "Spoken",
    "SpokenRun",
    "heard_original",
    "speakable",
]

_fixup_module_metadata(__name__, globals())
