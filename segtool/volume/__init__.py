"""Z-stacks: 3-D segmentation (synthetic stacks, reading/writing, baseline, predict, measure).

Everything here works on (Z, Y, X) arrays with an anisotropy ``z_spacing``
(the size of a voxel along z divided by its size in x and y). The 2-D modules
of segtool are unchanged; the commands call into this package when their
input is a Z stack and no ``--plane`` was given.
"""
