"""segtool: bioimage segmentation from the command line.

The package is a library first: every command in :mod:`segtool.cli` is a thin
layer over the functions in these modules, which can be imported and used
directly from Python.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
