"""Joining the pieces of objects cut by block edges into whole objects, numbered once.

Both Dask block schedules label every block on its own and join the pieces
on the client: :mod:`segtool.distributed.big_baseline` joins pieces whose
pixels touch across an edge, :mod:`segtool.distributed.big_predict` pieces
that cover the same pixels of the overlap two windows share. What counts as
"the same object" differs; the rest is this module:

- :func:`join_pieces` makes the connected components of the graph whose
  nodes are all blocks' pieces and whose edges are the pairs found at the
  seams (union-find), with each component's size and first position;
- :func:`number_objects` keeps the components of at least ``min_size``
  pixels and numbers them 1..N in order of their first position, so the
  numbering does not depend on how the image was cut or on scipy's order.
"""

from __future__ import annotations

import numpy as np

from segtool.errors import InputError

__all__ = ["join_pieces", "number_objects"]


def join_pieces(
    n_pieces: int, u: np.ndarray, v: np.ndarray, sizes: np.ndarray, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of pieces joined pairwise.

    Parameters
    ----------
    n_pieces : int
        Pieces, numbered 0..n_pieces - 1 over all blocks.
    u, v : (E,) ndarray of int
        Piece pairs that belong to the same object.
    sizes : (n_pieces,) ndarray of int
        Pixels per piece.
    first : (n_pieces,) ndarray of int
        Position of each piece (its first pixel's raster index, say); a
        component's position is its pieces' smallest.

    Returns
    -------
    component : (n_pieces,) ndarray of int
        Component of each piece, 0..C-1.
    component_sizes, component_first : (C,) ndarray of int64

    Examples
    --------
    >>> component, sizes, first = join_pieces(4, np.array([0]), np.array([2]), np.array([5, 1, 2, 3]), np.arange(4))
    >>> component.tolist(), sizes.tolist(), first.tolist()
    ([0, 1, 0, 2], [7, 1, 3], [0, 1, 3])
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(u.size, dtype=np.int8), (u, v)), shape=(n_pieces, n_pieces))
    n_components, component = connected_components(graph, directed=False)
    component_sizes = np.zeros(n_components, dtype=np.int64)
    np.add.at(component_sizes, component, sizes)
    component_first = np.full(n_components, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(component_first, component, first)
    return component, component_sizes, component_first


def number_objects(sizes: np.ndarray, first: np.ndarray, min_size: int) -> np.ndarray:
    """uint32 table: components of at least ``min_size`` (and 1) pixels to 1..N in order of ``first``; others 0.

    Raises
    ------
    InputError
        If more objects are kept than uint32 labels can number.

    Examples
    --------
    >>> number_objects(np.array([0, 9, 2, 5]), np.array([0, 30, 10, 20]), 3).tolist()
    [0, 2, 0, 1]
    """
    keep = np.flatnonzero(sizes >= max(int(min_size), 1))
    if keep.size > np.iinfo(np.uint32).max:
        raise InputError(f"{keep.size} objects do not fit in uint32 labels")
    keep = keep[np.argsort(first[keep], kind="stable")]
    table = np.zeros(len(sizes), dtype=np.uint32)
    table[keep] = np.arange(1, keep.size + 1, dtype=np.uint32)
    return table
