"""`python -m benchmarks`: the same as `python -m benchmarks.run_all` (every benchmark, one table, one JSON line)."""

import sys

from benchmarks.run_all import main

sys.exit(main())
