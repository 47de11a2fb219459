"""What one input means for each command, used alike by the CLI, the batch runner and Dask.

Every task follows :class:`segtool.batch.Task`: ``planned_outputs(path)`` names
the files an input will produce (so the batch runner can skip, refuse or
resume), and ``run(path)`` does the work and returns the figures reported per
input. Tasks are picklable, so ``--jobs`` worker processes and Dask workers
receive the same objects the CLI built.

- :mod:`~segtool.tasks.baseline` — ``baseline`` (2-D, or 3-D for a Z stack);
- :mod:`~segtool.tasks.predict` — ``predict`` (whole image, bands, Z stack);
- :mod:`~segtool.tasks.export` — ``export`` and ``measure``;
- :mod:`~segtool.tasks.evaluate` — ``evaluate`` (one prediction against its ground truth);
- :mod:`~segtool.tasks.big` — big-image mode (``--block-size``) of baseline and predict on Dask blocks;
- :mod:`~segtool.tasks.stack` — what a Z-stack input means for each command.

Each name is imported from the module that defines it (``from segtool.tasks.predict import PredictTask``).
"""
