"""Legendre surfaces (segtool.legendre): tables, blocked products, block-independent evaluation."""

from __future__ import annotations

import numpy as np

from segtool.legendre import correct_rows, evaluate_at, legendre_table, matmul_blocks


def test_tables_follow_the_closed_forms():
    t = np.linspace(-1, 1, 7)
    table = legendre_table(np.arange(7), 7, 3)
    assert np.allclose(table[:, 2], (3 * t**2 - 1) / 2)
    assert np.allclose(table[:, 3], (5 * t**3 - 3 * t) / 2)
    assert np.all(legendre_table([0], 1, 2) == [[1.0, 0.0, -0.5]])  # one pixel: the centre


def test_blocked_product_equals_the_product():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3000, 7)), rng.standard_normal((7, 40))
    assert np.allclose(matmul_blocks(a, b), a @ b)
    out = np.empty((3000, 40))
    assert matmul_blocks(a, b, out) is out


def test_any_block_reproduces_the_whole_surface_bit_for_bit():
    rng = np.random.default_rng(1)
    coef = rng.standard_normal((3, 3))
    shape = (37, 53)
    image = rng.standard_normal(shape).astype(np.float32)
    background = np.empty(shape, np.float32)
    corrected = np.empty(shape, np.float32)
    lo, hi = correct_rows(coef, image, background, corrected)
    assert (lo, hi) == (float(image.min()), float(image.max()))
    assert np.array_equal(corrected, image - background)
    block = np.empty((5, 9), np.float32)
    evaluate_at(coef, shape, np.arange(10, 15), np.arange(20, 29), block)
    assert np.array_equal(block, background[10:15, 20:29])


def test_correct_rows_thresholds_on_the_object_side():
    coef = np.zeros((1, 1))
    image = np.array([[0.0, 2.0, 5.0]], np.float32)
    mask = np.zeros(image.shape, bool)
    correct_rows(coef, image, np.empty_like(image), np.empty_like(image), level=1.0, polarity="dark", foreground=mask)
    assert mask.tolist() == [[True, False, False]]
