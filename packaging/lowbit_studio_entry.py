"""Entry script PyInstaller freezes into ``dist/lowbit-studio/lowbit-studio``.

It is the same as the ``lowbit-studio`` console script (``app.main:main``);
PyInstaller needs a file to start from, not an ``entry_points`` name.
"""

import multiprocessing
import sys

from app.main import main

if __name__ == "__main__":
    # Harmless on Linux (fork); needed if a frozen build ever spawns workers.
    multiprocessing.freeze_support()
    sys.exit(main())
