"""``python -m async_jobs``: the ``async-jobs`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
