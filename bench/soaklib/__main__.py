"""``python -m soaklib`` (from ``bench/``) is ``python bench/soak.py``."""

import sys

from .cli import main

sys.exit(main())
