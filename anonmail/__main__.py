"""`python -m anonmail` runs the command line."""

import sys

from anonmail.cli import main

sys.exit(main())
