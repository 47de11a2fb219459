"""Models that travel: exports other tools can run, and segtool's reading of them.

- :mod:`~segtool.interop.bioimageio_unet`: the network as one stand-alone file
  (the architecture inside exported packages).
- :mod:`~segtool.interop.netexport`: TorchScript and ONNX files, checked
  against PyTorch.
- :mod:`~segtool.interop.bioimageio`: bioimage.io model packages (format 0.5).
- :mod:`~segtool.interop.package`: reading segtool's own bioimage.io packages
  back as a model.
"""
