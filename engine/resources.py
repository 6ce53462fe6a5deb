"""Files the project ships (the demo model, icons): found in a source checkout's ``resources/``
or, once installed with pip, in ``<prefix>/share/lowbit-studio/``."""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent / "resources"
_INSTALLED = Path(sys.prefix) / "share" / "lowbit-studio"


def resource_path(*parts: str) -> Path:
    """The shipped file or folder ``parts``; the checkout's path when neither place has it."""
    for root in (_CHECKOUT, _INSTALLED):
        path = root.joinpath(*parts)
        if path.exists():
            return path
    return _CHECKOUT.joinpath(*parts)
