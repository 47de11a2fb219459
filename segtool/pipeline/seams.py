"""Joining the pieces of objects cut by block edges into whole objects, numbered once.

Both Dask block schedules label every block on its own and join the pieces
on the client: :mod:`segtool.distributed.big_baseline` joins pieces whose
pixels touch across an edge, :mod:`segtool.distributed.big_predict` pieces
that cover the same pixels of the overlap two windows share. The two pairing rules
are here side by side, and what follows them is shared:

- :func:`touching_pairs`: pieces whose pixels touch across the edge;
- :func:`overlap_pairs`: pieces that reach the edge and cover the same
  pixels of the overlap two windows share;
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

__all__ = ["MIN_SHARED", "join_pieces", "number_objects", "overlap_pairs", "touching_pairs"]

#: Share of the smaller piece's strip pixels two overlapping pieces must share to be one object.
MIN_SHARED = 0.5


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


def touching_pairs(a: np.ndarray, b: np.ndarray, shifts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of nonzero ids ``(a[k], b[k + s])`` for each shift ``s``: pixels that touch across a seam.

    ``a`` and ``b`` are the ids along the two sides of an edge (the last row
    of one block, the first row of the next); ``shifts`` are the offsets
    along the edge at which pixels count as touching (-1, 0, 1 for
    8-connectivity).

    Examples
    --------
    >>> [(x.tolist(), y.tolist()) for x, y in touching_pairs(np.array([1, 0, 2]), np.array([0, 5, 5]), np.array([0]))]
    [([2], [5])]
    """
    out = []
    for s in shifts:
        x, y = (a[: a.size - s], b[s:]) if s >= 0 else (a[-s:], b[: b.size + s])
        both = (x > 0) & (y > 0)
        out.append((x[both], y[both]))
    return out


def overlap_pairs(first: np.ndarray, second: np.ndarray, near_first: slice, near_second: slice) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs ``(a, b)`` of two blocks' strips over the same pixels that are one object.

    ``first`` and ``second`` are the two blocks' labels on the same strip,
    crossing axis first; ``near_*`` are the rows (of the strip) in each
    block's own core next to the edge. Label ``a`` and ``b`` are one object when both
    reach the edge in their own core (appear in ``near_*``) and they share at least
    :data:`MIN_SHARED` of the smaller one's strip pixels.

    Examples
    --------
    >>> first = np.array([[1, 1, 0, 2], [1, 1, 0, 2]])
    >>> second = np.array([[5, 5, 0, 6], [5, 5, 0, 0]])  # 6 does not reach the edge
    >>> overlap_pairs(first, second, slice(0, 1), slice(1, 2))
    (array([1]), array([5]))
    """
    a = first.ravel().astype(np.int64)
    b = second.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        empty = np.zeros(0, np.int64)
        return empty, empty
    span = int(b.max()) + 1
    keys, shared = np.unique(a[both] * span + b[both], return_counts=True)
    pa, pb = keys // span, keys % span
    smaller = np.minimum(np.bincount(a)[pa], np.bincount(b)[pb])
    keep = (shared >= MIN_SHARED * smaller) & np.isin(pa, first[near_first]) & np.isin(pb, second[near_second])
    return pa[keep], pb[keep]
