"""`python -m fastrnn ...`: the `fastrnn` command (see fastrnn/cli.py)."""
import sys

from .cli import main

sys.exit(main())
