"""Running segtool on Dask (the optional ``segtool[distributed]`` extra).

- :mod:`~segtool.distributed.cluster` — the ``--cluster`` option: start a local
  cluster or join a running scheduler.
- :mod:`~segtool.distributed.folder` — folder mode: one task per image, with
  the batch runner's guarantees (same outputs, skip/overwrite rules, errors).
- :mod:`~segtool.distributed.blockio` — big images read lazily in blocks (TIFF,
  Zarr, OME-Zarr); :mod:`~segtool.distributed.labelstore` — labels written
  block by block as OME-Zarr or tiled BigTIFF.
- :mod:`~segtool.distributed.big_baseline` and
  :mod:`~segtool.distributed.big_predict` — big-image mode: one image processed
  block by block on the cluster, with results equal to the in-memory ones.

Nothing here is imported unless a command is given ``--cluster`` or
``--block-size``, so segtool works without Dask installed.
"""
