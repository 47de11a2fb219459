"""``segtool report``: one static page to look over a whole run, the results that need a second look on top.

The pieces, each in its own module:

- :mod:`~segtool.report.stats`: per-image figures (count, median diameter,
  coverage, border contacts, saturation) and robust z-scores (pure).
- :mod:`~segtool.report.flags`: which results to look at again, and why (pure).
- :mod:`~segtool.report.svg`, :mod:`~segtool.report.thumbs`,
  :mod:`~segtool.report.page`: histograms, thumbnails and the HTML (pure).
- :mod:`~segtool.report.modelinfo`: a model's version and training diameter,
  read without PyTorch.
- :mod:`~segtool.report.collect`, :mod:`~segtool.report.task`,
  :mod:`~segtool.report.build`: the disk edge (manifest, label files,
  thumbnails, ``index.html``), run with the batch machinery (``--jobs``).

Nothing here imports torch: the report opens and measures results, it never
runs a network.
"""
