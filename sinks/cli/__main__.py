"""``python -m sinks.cli``: the same as the ``llmpipe`` command."""

import sys

from . import main

sys.exit(main())
