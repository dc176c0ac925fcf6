"""`python -m analysis RUN_DIR... --out DIR`: the same as `python -m analysis.report`."""

import sys

from .report import main

sys.exit(main())
