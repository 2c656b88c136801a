"""llmpipe's benchmarks: ``python -m benchmarks`` runs them all (see ``__main__.py``).

Each ``bench_*.py`` also runs on its own as a script; ``_benchlib`` is what they share.
"""
