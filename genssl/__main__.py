"""`python -m genssl`: the genssl command line (genssl.cli)."""

import sys

from genssl.cli import main

sys.exit(main())
