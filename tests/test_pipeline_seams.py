"""Joining object pieces across block edges and numbering the objects."""

from __future__ import annotations

import numpy as np

from segtool.pipeline.seams import join_pieces, number_objects


def test_join_pieces_sums_sizes_and_keeps_the_first_position():
    sizes = np.array([4, 1, 6, 2, 3])
    first = np.array([40, 10, 5, 30, 20])
    component, comp_sizes, comp_first = join_pieces(5, np.array([0, 2]), np.array([2, 4]), sizes, first)
    assert component[0] == component[2] == component[4] != component[1] != component[3]
    assert comp_sizes[component[0]] == 13 and comp_first[component[0]] == 5
    assert comp_sizes[component[3]] == 2 and comp_first[component[1]] == 10


def test_number_objects_by_first_position_dropping_small_ones():
    table = number_objects(np.array([0, 9, 2, 5, 5]), np.array([0, 30, 10, 20, 25]), 3)
    assert table.dtype == np.uint32 and table.tolist() == [0, 3, 0, 1, 2]
    # min_size 0 still drops empty components (the background)
    assert number_objects(np.array([0, 1]), np.array([0, 1]), 0).tolist() == [0, 1]
