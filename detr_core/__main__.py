"""`python -m detr_core IMAGE... --model NAME --out DIR`: see detr_core/cli.py."""

import sys

from .cli import main

sys.exit(main())
