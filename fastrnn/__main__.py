"""`python -m fastrnn ...`: the `fastrnn` command (see fastrnn/cli/__init__.py)."""
import sys

from .cli import main

sys.exit(main())
