"""``python -m benchmarks [--quick] [--only NAME]``: see benchmarks/_suite.py."""

import sys

from ._suite import main

sys.exit(main())
