"""``python -m maskiou.addon`` (and ``torchrun ... -m maskiou.addon``): the maskiou-addon CLI."""

import sys

from maskiou.addon.cli import main

sys.exit(main())
