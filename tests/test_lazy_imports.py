"""The provider SDKs and store clients the server may not need load lazily.

``anthropic`` (~146k GC-tracked objects) and ``coredis`` (which pulls in ``beartype``) are
imported only when ``AnthropicProducer`` / ``anthropic_client`` / ``RedisStore`` are accessed
(or ``open_store`` gets a Redis URL). Checked in a fresh interpreter: this test process has
imported them already.
"""

from __future__ import annotations

import subprocess
import sys

IMPORTS = (
    "import pipeline, pipeline.producers, pipeline.stores, sinks.server, sinks.cli; import sys"
)


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", f"{IMPORTS}; {code}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def test_server_imports_skip_anthropic_and_coredis() -> None:
    out = run("print('anthropic' in sys.modules, 'coredis' in sys.modules)")
    assert out == "False False"


def test_anthropic_producer_loads_on_access() -> None:
    out = run(
        "assert 'anthropic' not in sys.modules; "
        "P = pipeline.producers.AnthropicProducer; "
        "from pipeline.producers import anthropic_client; "
        "from pipeline.producers._anthropic import AnthropicProducer; "
        "print('anthropic' in sys.modules, P is AnthropicProducer, 'coredis' in sys.modules)"
    )
    assert out == "True True False"


def test_redis_store_loads_on_access() -> None:
    out = run(
        "assert 'coredis' not in sys.modules; "
        "R = pipeline.stores.RedisStore; "
        "from pipeline.stores._redis import RedisStore; "
        "print('coredis' in sys.modules, R is RedisStore, 'anthropic' in sys.modules)"
    )
    assert out == "True True False"


def test_open_store_loads_redis_for_a_redis_url() -> None:
    out = run(
        "from pipeline.stores import open_store; "
        "open_store('memory://'); a = 'coredis' in sys.modules; "
        "s = open_store('redis://127.0.0.1:1/0'); "
        "print(a, 'coredis' in sys.modules, type(s).__name__)"
    )
    assert out == "False True RedisStore"
