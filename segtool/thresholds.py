"""Names of the automatic threshold methods, in one place.

A module of its own, with no imports, so the CLI can check ``--threshold``
without loading SciPy at startup; :mod:`segtool.baseline` and
:mod:`segtool.volume.baseline` use the same tuple.
"""

from __future__ import annotations

__all__ = ["THRESHOLD_METHODS"]

#: Names accepted by ``threshold=`` (functions of ``skimage.filters``).
THRESHOLD_METHODS: tuple[str, ...] = ("otsu", "li", "triangle", "yen")
