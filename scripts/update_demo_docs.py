"""Copy the demo's summary and figures into docs/assets and regenerate the demo tables of the
README and docs/benchmarks.md from them (run after README command 1; --check only compares).

    bash scripts/env.sh python scripts/update_demo_docs.py [--results results] [--check]
"""

import sys

from cellseg.reporting.demo_docs import main

if __name__ == "__main__":
    sys.exit(main())
