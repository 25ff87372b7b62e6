"""``python -m cellseg``: the command line without the ``cellseg`` entry point installed.

The workflow's rules call this form, so a job runs the package next to the Snakefile whether or
not it is installed in the job's environment (a ``--sdm conda`` environment has only the
dependencies).
"""

import sys

from cellseg.cli import main

sys.exit(main())
