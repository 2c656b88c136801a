"""The ``llmpipe`` command line (the console script calls :func:`main`)."""

from ._main import Backend as Backend
from ._main import main as main
from ._main import open_backend as open_backend

__all__ = ["Backend", "main", "open_backend"]
