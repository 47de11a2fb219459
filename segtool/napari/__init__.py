"""napari plugin: open segtool results, save labels the way ``segtool export`` does, segment from the viewer.

Declared by ``napari.yaml`` (an npe2 manifest) through the ``napari.manifest``
entry point; install with ``pip install 'segtool[napari]'``.

- :mod:`~segtool.napari.reader`: ``*_labels.tif`` and OME-Zarr labels as Labels
  layers, ``*_prob.tif`` as image layers, with the pixel size as scale;
- :mod:`~segtool.napari.writer`: a Labels layer to a label TIFF, ImageJ ROI
  zip, QuPath GeoJSON or per-object CSV;
- :mod:`~segtool.napari.widget`: "Segment with segtool" (U-Net or baseline) in
  a worker thread.

The reader and writer need no napari import: they return and take napari's
plain layer-data tuples, so they are tested without a display.
"""
