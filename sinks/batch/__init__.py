"""Batch document generation: many prompts, one document each, within the provider's limits.

A :class:`Batch` reads jobs from a :class:`JobSource` (:class:`JobsFile`: JSON Lines in the
OpenAI Batch request format or a short form), admits each request through a :class:`Limiter`
(:class:`LocalLimiter`: concurrency, requests and tokens per minute, a provider's 429 pausing
everyone) and records each outcome in a :class:`Ledger` (:class:`BatchDirectory`: one document
per job written atomically, ``results.jsonl`` / ``errors.jsonl`` in the OpenAI Batch output
format, which is also the manifest a rerun resumes from). Progress comes as events.
"""

from pipeline.packaging import fixup_module_metadata as _fixup_module_metadata

from ._jobs import RESERVED_NAMES as RESERVED_NAMES
from ._jobs import InvalidJob as InvalidJob
from ._jobs import InvalidLine as InvalidLine
from ._jobs import Job as Job
from ._jobs import JobsFile as JobsFile
from ._jobs import JobSource as JobSource
from ._jobs import count_lines as count_lines
from ._jobs import output_name as output_name
from ._jobs import parse_job as parse_job
from ._jobs import parse_jobs as parse_jobs
from ._limits import DEFAULT_WINDOW as DEFAULT_WINDOW
from ._limits import Limiter as Limiter
from ._limits import LimiterStatistics as LimiterStatistics
from ._limits import LocalLimiter as LocalLimiter
from ._limits import Permit as Permit
from ._limits import TokenBudget as TokenBudget
from ._outputs import ERRORS_FILE as ERRORS_FILE
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

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_WINDOW",
    "ERRORS_FILE",
    "RESERVED_NAMES",
    "RESULTS_FILE",
    "Batch",
    "BatchConfig",
    "BatchDirectory",
    "BatchEnded",
    "BatchEvent",
    "BatchStatistics",
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
    "ProducerFactory",
    "RateLimited",
    "TokenBudget",
    "backend_producers",
    "count_lines",
    "error_record",
    "open_directory",
    "output_name",
    "parse_job",
    "parse_jobs",
    "result_record",
]

_fixup_module_metadata(__name__, globals())
