"""What you need to test your own stages, producers and sinks.

* :class:`ScriptedProducer` (re-exported): a script of events with delays, for ``MockClock``.
* :class:`CountingProducer`: an endless (or long) source of small text deltas that counts what
  it emitted and records when it was closed, for backpressure and cancellation tests.
* :class:`RecordingSink`: records every event it reads, optionally slowly, and checks that no
  two deliveries overlap.
* :func:`check_sink`: a conformance check every sink should pass.
* :mod:`pipeline.testing.emulator`: a provider emulator (OpenAI and Anthropic streaming
  endpoints on a real loopback socket, with faults) for the real SDKs to talk to.
"""

from ..packaging import fixup_module_metadata as _fixup_module_metadata
from ._kit import CountingProducer as CountingProducer
from ._kit import RecordingSink as RecordingSink
from ._kit import ScriptedProducer as ScriptedProducer
from ._kit import Step as Step
from ._kit import check_sink as check_sink

__all__ = ["CountingProducer", "RecordingSink", "ScriptedProducer", "Step", "check_sink"]

_fixup_module_metadata(__name__, globals())
