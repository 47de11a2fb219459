"""matplotlib is an optional extra (``segtool[plot]``): find out whether plots can be drawn.

The training curve (:func:`segtool.train.report.plot_curve`) and the score plot
of ``evaluate --plot`` (:func:`segtool.export.write_score_plot`) need it; the
rest of segtool does not.
"""

from __future__ import annotations

import importlib.util

from segtool.errors import SegtoolError

__all__ = ["PLOT_HINT", "plotting_available", "require_plotting"]

#: How to get the optional plotting dependency.
PLOT_HINT = "pip install 'segtool[plot]' (matplotlib)"


def plotting_available() -> bool:
    """Whether matplotlib is installed (looked up, not imported)."""
    return importlib.util.find_spec("matplotlib") is not None


def require_plotting(what: str) -> None:
    """Raise a one-line :class:`~segtool.errors.SegtoolError` naming ``what`` when matplotlib is missing.

    Raises
    ------
    SegtoolError
        Without matplotlib; the message says how to install it.
    """
    if not plotting_available():
        raise SegtoolError(f"{what} needs matplotlib: {PLOT_HINT}")
