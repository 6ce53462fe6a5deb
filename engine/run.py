"""``python -m engine.run RECIPE --out DIR [--resume]``: the entry point torchrun starts
(see :mod:`engine.cli.torchrun_entry`)."""

import sys

from .cli.torchrun_entry import main

if __name__ == "__main__":
    sys.exit(main())
