"""``python -m maskiou.training`` (or ``maskiou-train``, or under ``torchrun -m``): train."""

import sys

from maskiou.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
