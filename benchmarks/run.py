"""``python benchmarks/run.py [--quick] [--only NAME]``: the same as ``python -m benchmarks``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._suite import main

if __name__ == "__main__":
    sys.exit(main())
