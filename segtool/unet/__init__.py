"""U-Net training and inference.

The pieces, each in its own module:

- :mod:`~segtool.unet.config`: :class:`UNetConfig`, the JSON-safe description
  of a network (architecture, normalisation, target type, post-processing).
- :mod:`~segtool.unet.model`: :class:`UNet`, the network.
- :mod:`~segtool.unet.heads`: :func:`activate`, logits to probability maps.
- :mod:`~segtool.unet.modelfile`: :func:`save_model`, :func:`load_model`;
  :mod:`~segtool.unet.modelcheck`: a model file checked against itself first.
- :mod:`~segtool.unet.targets`, ``augment``, ``dataset``, ``train``: training.
- ``tiling``, ``context``, ``instances``, ``predict``, ``bands``: inference
  (the schedules that overlap its stages are in :mod:`segtool.pipeline`).

Submodules are imported on demand so ``import segtool`` stays fast.
"""

from segtool.unet.config import UNetConfig

__all__ = ["UNetConfig"]
