"""`python -m optc`: the optc command line (the same as the `optc` script)."""

import sys

from .tools.cli import main

sys.exit(main())
