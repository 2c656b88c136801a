"""Batch document generation: many prompts, one document each, within the provider's limits.

A :class:`Batch` reads jobs from a :class:`JobSource` (:class:`JobsFile`: JSON Lines in the
OpenAI Batch request format or a short form), admits each request through a :class:`Limiter`
(:class:`LocalLimiter`: concurrency, requests and tokens per minute, a provider's 429 pausing
everyone) and records each outcome in a :class:`Ledger` (:class:`BatchDirectory`: one document
per job written atomically, ``results.jsonl`` / ``errors.jsonl`` in the OpenAI Batch output
format, which is also the manifest a rerun resumes from). Progress comes as events.

Beyond one machine: a :class:`RedisJobQueue` holds the jobs on a Redis stream, each
:class:`Worker` (on any machine) takes them through a consumer group and records outcomes back
in it, a :class:`RedisLimiter` shares the limits and a :class:`RedisTokenBudget` the token
budget. These names load lazily (PEP 562), so
``coredis`` (the ``redis`` extra) is imported only when one is used.

:func:`run_provider_batch` sends the same jobs through a provider's Batch API instead
(OpenAI's Files and Batches endpoints) and records them in the same ledger.
"""

import typing as _typing

from pipeline.packaging import fixup_module_metadata as _fixup_module_metadata
from pipeline.packaging import lazy_attributes as _lazy_attributes

from ._jobs import RESERVED_NAMES as RESERVED_NAMES
from ._jobs import InvalidJob as InvalidJob
from ._jobs import InvalidLine as InvalidLine
from ._jobs import Job as Job
from ._jobs import JobsFile as JobsFile
from ._jobs import JobSource as JobSource
from ._jobs import count_lines as count_lines
from ._jobs import job_from_json as job_from_json
from ._jobs import job_to_json as job_to_json
from ._jobs import output_name as output_name
from ._jobs import parse_job as parse_job
from ._jobs import parse_jobs as parse_jobs
from ._limits import DEFAULT_WINDOW as DEFAULT_WINDOW
from ._limits import Budget as Budget
from ._limits import BudgetExhausted as BudgetExhausted
from ._limits import Limiter as Limiter
from ._limits import LimiterStatistics as LimiterStatistics
from ._limits import LocalLimiter as LocalLimiter
from ._limits import Permit as Permit
from ._limits import TokenBudget as TokenBudget
from ._openai_batch import BATCH_ENDPOINT as BATCH_ENDPOINT
from ._openai_batch import ProviderBatchEnded as ProviderBatchEnded
from ._openai_batch import ProviderBatchEvent as ProviderBatchEvent
from ._openai_batch import ProviderBatchPolled as ProviderBatchPolled
from ._openai_batch import ProviderBatchSubmitted as ProviderBatchSubmitted
from ._openai_batch import batch_request as batch_request
from ._openai_batch import run_provider_batch as run_provider_batch
from ._outputs import ERRORS_FILE as ERRORS_FILE
from ._outputs import PROVIDER_BATCH_FILE as PROVIDER_BATCH_FILE
from ._outputs import RESULTS_FILE as RESULTS_FILE
from ._outputs import BatchDirectory as BatchDirectory
from ._outputs import JobFailure as JobFailure
from ._outputs import JobOutcome as JobOutcome
from ._outputs import Ledger as Ledger
from ._outputs import error_record as error_record
from ._outputs import open_directory as open_directory
from ._outputs import result_record as result_record
from ._runner import DEFAULT_MAX_TOKENS as DEFAULT_MAX_TOKENS
from ._runner import Batch as Batch
from ._runner import BatchConfig as BatchConfig
from ._runner import BatchEnded as BatchEnded
from ._runner import BatchEvent as BatchEvent
from ._runner import BatchStatistics as BatchStatistics
from ._runner import JobDone as JobDone
from ._runner import JobFailed as JobFailed
from ._runner import JobRetrying as JobRetrying
from ._runner import JobSkipped as JobSkipped
from ._runner import JobStarted as JobStarted
from ._runner import LineSkipped as LineSkipped
from ._runner import ProducerFactory as ProducerFactory
from ._runner import RateLimited as RateLimited
from ._runner import backend_producers as backend_producers

if _typing.TYPE_CHECKING:
    from ._queue import Delivery as Delivery
    from ._queue import QueueCounts as QueueCounts
    from ._queue import QueueError as QueueError
    from ._queue import RedisJobQueue as RedisJobQueue
    from ._redis_limits import RedisLimiter as RedisLimiter
    from ._redis_limits import RedisTokenBudget as RedisTokenBudget
    from ._redis_limits import open_redis_budget as open_redis_budget
    from ._redis_limits import open_redis_limiter as open_redis_limiter
    from ._worker import Worker as Worker
    from ._worker import WorkerConfig as WorkerConfig

__all__ = [
    "BATCH_ENDPOINT",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_WINDOW",
    "ERRORS_FILE",
    "PROVIDER_BATCH_FILE",
    "RESERVED_NAMES",
    "RESULTS_FILE",
    "Batch",
    "BatchConfig",
    "BatchDirectory",
    "BatchEnded",
    "BatchEvent",
    "BatchStatistics",
    "Budget",
    "BudgetExhausted",
    "Delivery",
    "InvalidJob",
    "InvalidLine",
    "Job",
    "JobDone",
    "JobFailed",
    "JobFailure",
    "JobOutcome",
    "JobRetrying",
    "JobSkipped",
    "JobSource",
    "JobStarted",
    "JobsFile",
    "Ledger",
    "Limiter",
    "LimiterStatistics",
    "LineSkipped",
    "LocalLimiter",
    "Permit",
    "ProviderBatchEnded",
    "ProviderBatchEvent",
    "ProviderBatchPolled",
    "ProviderBatchSubmitted",
    "ProducerFactory",
    "QueueCounts",
    "QueueError",
    "RateLimited",
    "RedisJobQueue",
    "RedisLimiter",
    "RedisTokenBudget",
    "TokenBudget",
    "Worker",
    "WorkerConfig",
    "backend_producers",
    "batch_request",
    "count_lines",
    "error_record",
    "job_from_json",
    "job_to_json",
    "open_directory",
    "open_redis_budget",
    "open_redis_limiter",
    "output_name",
    "parse_job",
    "parse_jobs",
    "result_record",
    "run_provider_batch",
]

# Public name -> the private module that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "Delivery": "._queue",
    "QueueCounts": "._queue",
    "QueueError": "._queue",
    "RedisJobQueue": "._queue",
    "RedisLimiter": "._redis_limits",
    "RedisTokenBudget": "._redis_limits",
    "open_redis_budget": "._redis_limits",
    "open_redis_limiter": "._redis_limits",
    "Worker": "._worker",
    "WorkerConfig": "._worker",
}

if not _typing.TYPE_CHECKING:  # hidden from mypy, which would type every unknown name as Any
    __getattr__, __dir__ = _lazy_attributes(globals(), _LAZY, __all__)

_fixup_module_metadata(__name__, globals())
