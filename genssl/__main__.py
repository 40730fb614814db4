import sys

from genssl.cli import main

sys.exit(main())
