"""App-wide settings, each key declared once with its type, default and meaning.

Settings live in an INI file. ``LOWBIT_SETTINGS_DIR`` points them at another
folder (tests set it to a temporary one, so they never read or write the real
user's settings).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from PySide6.QtCore import QByteArray, QSettings

ORGANIZATION = "LowbitStudio"
APPLICATION = "lowbit-studio"
ENV_DIR = "LOWBIT_SETTINGS_DIR"
MAX_RECENT = 8


@dataclass(frozen=True)
class Key:
    name: str
    type: type
    default: Any
    description: str


RECENT_MODELS = Key("models/recent", list, [], "Model folders opened recently, newest first")
LAST_MODEL_DIR = Key("paths/last_model_dir", str, "", "Where the model folder dialog opens")
LAST_DATA_DIR = Key("paths/last_data_dir", str, "", "Where the data file dialog opens")
LAST_RECIPE_DIR = Key("paths/last_recipe_dir", str, "", "Where the recipe dialogs open")
LAST_EXPORT_DIR = Key("paths/last_export_dir", str, "", "Where the export folder dialog opens")
RUNS_DIR = Key("paths/runs_dir", str, str(Path.home() / "lowbit-runs"), "Folder that receives run folders")
LIBRARY_DIRS = Key("paths/library_dirs", list, [], "Folders of runs the Runs step lists besides the runs folder")
THEME = Key("view/theme", str, "system", "system, light or dark")
GEOMETRY = Key("window/geometry", QByteArray, QByteArray(), "Main window geometry")
WINDOW_STATE = Key("window/state", QByteArray, QByteArray(), "Main window toolbars and docks")

ALL_KEYS = (RECENT_MODELS, LAST_MODEL_DIR, LAST_DATA_DIR, LAST_RECIPE_DIR, LAST_EXPORT_DIR, RUNS_DIR, LIBRARY_DIRS,
            THEME, GEOMETRY, WINDOW_STATE)


class Settings:
    """Typed access to the declared keys."""

    def __init__(self, qsettings: QSettings | None = None):
        self.q = qsettings if qsettings is not None else open_qsettings()

    def get(self, key: Key) -> Any:
        value = self.q.value(key.name, key.default)
        if value is None:
            return key.default
        if key.type is list:
            if isinstance(value, str):  # QSettings returns a lone string for a one-item list
                return [value]
            return list(value)
        if key.type is QByteArray:
            return value if isinstance(value, QByteArray) else QByteArray(value)
        return key.type(value)

    def set(self, key: Key, value: Any) -> None:
        self.q.setValue(key.name, value)

    def recent_models(self) -> List[str]:
        return [p for p in self.get(RECENT_MODELS) if p]

    def add_recent_model(self, path: str) -> List[str]:
        recent = [str(path)] + [p for p in self.recent_models() if p != str(path)]
        recent = recent[:MAX_RECENT]
        self.set(RECENT_MODELS, recent)
        return recent

    def sync(self) -> None:
        self.q.sync()


def open_qsettings() -> QSettings:
    folder = os.environ.get(ENV_DIR)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return QSettings(str(Path(folder) / f"{APPLICATION}.ini"), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)
