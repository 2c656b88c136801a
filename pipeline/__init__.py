"""llmpipe's core: events, errors, bounded channels, stages, the runner and the backoff.

Public names only; the code lives in the private modules. The layers above the core are
subpackages: :mod:`pipeline.text` (sentences, chunking), :mod:`pipeline.wire` (SSE, NDJSON),
:mod:`pipeline.producers`, :mod:`pipeline.stores`, :mod:`pipeline.client` and
:mod:`pipeline.testing`; the consumers are in the ``sinks`` package.
"""

from ._channels import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from ._channels import DEFAULT_MAX_ITEMS as DEFAULT_MAX_ITEMS
from ._channels import ChannelStatistics as ChannelStatistics
from ._channels import DirectConsumer as DirectConsumer
from ._channels import EventReceiver as EventReceiver
from ._channels import EventSender as EventSender
from ._channels import Policy as Policy
from ._channels import PolicyName as PolicyName
from ._channels import open_event_channel as open_event_channel
from ._errors import ChannelOverflowError as ChannelOverflowError
from ._errors import ConfigError as ConfigError
from ._errors import ConsumerGone as ConsumerGone
from ._errors import LLMPipeError as LLMPipeError
from ._errors import MissingExtraError as MissingExtraError
from ._errors import ProducerConnectionError as ProducerConnectionError
from ._errors import ProducerError as ProducerError
from ._errors import ProducerProtocolError as ProducerProtocolError
from ._errors import ProducerStatusError as ProducerStatusError
from ._errors import ProducerTimeout as ProducerTimeout
from ._errors import StageError as StageError
from ._errors import error_event as error_event
from ._errors import lone_exception as lone_exception
from ._errors import lone_exception_unwrapped as lone_exception_unwrapped
from ._events import Done as Done
from ._events import Dropped as Dropped
from ._events import Error as Error
from ._events import Event as Event
from ._events import Heartbeat as Heartbeat
from ._events import Metadata as Metadata
from ._events import TextDelta as TextDelta
from ._events import ToolCallDelta as ToolCallDelta
from ._events import ToolCallEnd as ToolCallEnd
from ._events import ToolCallStart as ToolCallStart
from ._events import Usage as Usage
from ._events import event_from_dict as event_from_dict
from ._events import event_from_json as event_from_json
from ._events import event_nbytes as event_nbytes
from ._events import event_to_dict as event_to_dict
from ._events import event_to_json as event_to_json
from ._events import is_terminal as is_terminal
from ._events import json_text as json_text
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineStatistics as PipelineStatistics
from ._pipeline import Route as Route
from ._pipeline import RunningPipeline as RunningPipeline
from ._pipeline import Sink as Sink
from ._pipeline import SinkStatistics as SinkStatistics
from ._producer import Emit as Emit
from ._producer import Producer as Producer
from ._retry import Backoff as Backoff
from ._stage import Stage as Stage
from ._stage import StageContext as StageContext
from ._stage import StageStatistics as StageStatistics
from ._stage import TextStage as TextStage
from ._stages import Accumulate as Accumulate
from ._stages import AccumulatedTimings as AccumulatedTimings
from ._stages import Transform as Transform
from ._stages import Validate as Validate
from .packaging import fixup_module_metadata as _fixup_module_metadata

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ITEMS",
    "Accumulate",
    "AccumulatedTimings",
    "Backoff",
    "ChannelOverflowError",
    "ChannelStatistics",
    "ConfigError",
    "ConsumerGone",
    "DirectConsumer",
    "Done",
    "Dropped",
    "Emit",
    "Error",
    "Event",
    "EventReceiver",
    "EventSender",
    "Heartbeat",
    "LLMPipeError",
    "MissingExtraError",
    "Metadata",
    "Pipeline",
    "PipelineStatistics",
    "Policy",
    "PolicyName",
    "Producer",
    "ProducerConnectionError",
    "ProducerError",
    "ProducerProtocolError",
    "ProducerStatusError",
    "ProducerTimeout",
    "Route",
    "RunningPipeline",
    "Sink",
    "SinkStatistics",
    "Stage",
    "StageContext",
    "StageError",
    "StageStatistics",
    "TextDelta",
    "TextStage",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "Transform",
    "Usage",
    "Validate",
    "error_event",
    "event_from_dict",
    "event_from_json",
    "event_nbytes",
    "event_to_dict",
    "event_to_json",
    "json_text",
    "is_terminal",
    "lone_exception",
    "lone_exception_unwrapped",
    "open_event_channel",
]

_fixup_module_metadata(__name__, globals())
