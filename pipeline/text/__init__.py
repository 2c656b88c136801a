"""Text for people and speech engines: sentence segmentation, grapheme-safe cuts, chunking.

:class:`SentenceBuffer` is the incremental, chunk-invariant, lossless sentence segmenter;
:class:`SentenceStage` runs it as a pipeline stage (with a stall deadline) and
:class:`AdaptiveChunker` batches deltas for displays. Pure text: no I/O, no trio; the stages
take their time from the ``now`` the runner gives them.
"""

from ..packaging import fixup_module_metadata as _fixup_module_metadata
from ._chunker import AdaptiveChunker as AdaptiveChunker
from ._sentences import SentenceBuffer as SentenceBuffer
from ._stages import SentenceStage as SentenceStage

__all__ = ["AdaptiveChunker", "SentenceBuffer", "SentenceStage"]

_fixup_module_metadata(__name__, globals())
