"""A growing (x, y) series in preallocated numpy arrays, doubled when full."""

from __future__ import annotations

from typing import Tuple

import numpy as np


class Series:
    """Appends are O(1) amortised; ``view()`` returns slices, never copies."""

    def __init__(self, capacity: int = 1024):
        self._x = np.empty(capacity, dtype=np.float64)
        self._y = np.empty(capacity, dtype=np.float64)
        self.n = 0

    @property
    def capacity(self) -> int:
        return len(self._x)

    def _reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        size = self.capacity
        while size < needed:
            size *= 2
        for name in ("_x", "_y"):
            old = getattr(self, name)
            new = np.empty(size, dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def append(self, x: float, y: float) -> None:
        self._reserve(self.n + 1)
        self._x[self.n] = x
        self._y[self.n] = y
        self.n += 1

    def extend(self, xs, ys) -> None:
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        self._reserve(self.n + len(xs))
        self._x[self.n: self.n + len(xs)] = xs
        self._y[self.n: self.n + len(ys)] = ys
        self.n += len(xs)

    def view(self) -> Tuple[np.ndarray, np.ndarray]:
        return self._x[: self.n], self._y[: self.n]

    def clear(self) -> None:
        self.n = 0

    def __len__(self) -> int:
        return self.n
