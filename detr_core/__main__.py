"""`python -m detr_core IMAGE... --model NAME --out DIR`: see detr_core/cli.py."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a decode worker (forkserver) imports the main module
    sys.exit(main())
