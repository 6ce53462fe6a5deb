"""Defaults the window starts with.

The demo model becomes the default model in another issue; this is its hook:
return a folder here and the window opens it when no model is given.
"""

from __future__ import annotations

from typing import Optional


def default_model_path() -> Optional[str]:
    """The model folder to open when none is given on the command line (None: start empty)."""
    return None
