"""Options passed whole: TileOptions and ObjectOptions."""

from __future__ import annotations

import dataclasses

import pytest

from segtool.errors import InputError
from segtool.pipeline.options import ObjectOptions, TileOptions, plan_inference_tiles
from segtool.model.config import UNetConfig


def test_options_are_frozen_and_default_to_the_model():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TileOptions().tile = 64  # type: ignore[misc]
    config = UNetConfig(postprocess={"prob_threshold": 0.4, "min_size": 30, "split_height": 2.0})
    assert ObjectOptions().resolve(config) == {"prob_threshold": 0.4, "min_size": 30, "split_height": 2.0}
    assert ObjectOptions(min_size=5, split_height=0).resolve(config) == {"prob_threshold": 0.4, "min_size": 5}


def test_tile_options_plan_as_the_planner_does():
    config = UNetConfig(depth=4, patch_size=128)
    for options in (TileOptions(), TileOptions(tile=512, tile_halo=40), TileOptions(tile=128, overlap=0.25, batch_size=2)):
        expected = plan_inference_tiles(config, (1000, 700), device_type="cpu", tile=options.tile, overlap=options.overlap,
                                        tile_halo=options.tile_halo, batch_size=options.batch_size)
        assert options.plan(config, (1000, 700)) == expected
    assert TileOptions(tile=128, overlap=0.25).plan(config, (256, 256)).n_tiles == 9


@pytest.mark.parametrize("options, match", [(TileOptions(overlap=1.0), "overlap"), (TileOptions(batch_size=0), "batch size"),
                                            (TileOptions(scale=30), "scale")])
def test_tile_options_check(options, match):
    with pytest.raises(InputError, match=match):
        options.check()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(300, 200), (3000, 3000), (8192, 8192), (20000, 700)])
def test_default_cpu_tiles_fit_the_memory_budget(precision, shape):
    from segtool.pipeline.options import TILE_MEMORY, activation_bytes, budget_tile

    config = UNetConfig(depth=4, patch_size=128)
    plan = plan_inference_tiles(config, shape, device_type="cpu", precision=precision)
    call = plan.batch_size * plan.tile[0] * plan.tile[1] * activation_bytes(config, precision)
    assert call <= TILE_MEMORY["cpu"]
    # halo tiles are evened out below the budget's side, never above it
    assert max(plan.tile) <= budget_tile(config, device_type="cpu", precision=precision)


def test_an_explicit_tile_is_not_capped_by_the_budget():
    config = UNetConfig(depth=4, patch_size=128)
    # 2048 holds four cores of 1840 (2048 - 2 halos): the evened-out tiles of 8192 are 1808 > the budget's 1136
    assert plan_inference_tiles(config, (8192, 8192), device_type="cpu", tile=2048).tile == (1808, 1808)


def test_blended_fills_only_what_was_not_given():
    """Dask blocks and Z stacks tile on a blended grid: overlap 0.25 and 4 tiles per call unless given."""
    assert TileOptions(tile=128, tta=True, tile_halo=8).blended() == TileOptions(
        tile=128, overlap=0.25, tile_halo=8, batch_size=4, tta=True)
    given = TileOptions(overlap=0.1, batch_size=2, scale=None)
    assert given.blended() == given


def test_stack_options_hold_the_shared_options_whole():
    from segtool.volume.predict import StackPredictOptions

    objects = ObjectOptions(min_size=3, seed_threshold=0.6)
    options = StackPredictOptions(mode="stitch", tiling=TileOptions(tile=64, tta=True, scale=None), objects=objects)
    assert options.objects is objects
    assert options.tiling == TileOptions(tile=64, overlap=0.25, batch_size=4, tta=True, scale=None)
    assert options.scale == 1.0 and options.at_scale(0.5).tiling.scale == 0.5 and options.at_scale(0.5).objects is objects
    assert StackPredictOptions().tiling == TileOptions(overlap=0.25, batch_size=4)


def test_each_default_is_written_once_and_used_everywhere():
    """The stitch threshold, band/block halo and blended tiling defaults: one constant each (README values),
    the same in the CLI, the tasks, the stack options and the compute functions."""
    import inspect

    import typer

    from segtool.cli.application import app
    from segtool.distributed.big_predict import predict_blocks
    from segtool.pipeline.options import SEAM_HALO
    from segtool.pipeline.tiling import BLEND_BATCH_SIZE, BLEND_OVERLAP, plan_tiles, predict_tiled, predict_tiled_rows
    from segtool.tasks.predict import PredictTask
    from segtool.volume.predict import StackPredictOptions
    from segtool.volume.stitch import STITCH_THRESHOLD, PlaneStitcher, stitch_planes

    assert (STITCH_THRESHOLD, SEAM_HALO, BLEND_OVERLAP, BLEND_BATCH_SIZE) == (0.25, 128, 0.25, 4)
    predict = typer.main.get_command(app).commands["predict"]
    cli = {param.name: param.default for param in predict.params}
    assert (cli["stitch_threshold"], cli["halo"]) == (STITCH_THRESHOLD, SEAM_HALO)
    task = {field.name: field.default for field in dataclasses.fields(PredictTask)}
    assert (task["stitch_threshold"], task["halo"]) == (STITCH_THRESHOLD, SEAM_HALO)
    assert StackPredictOptions().stitch_threshold == STITCH_THRESHOLD
    assert PlaneStitcher().threshold == STITCH_THRESHOLD
    assert inspect.signature(stitch_planes).parameters["threshold"].default == STITCH_THRESHOLD
    assert inspect.signature(predict_blocks).parameters["halo"].default == SEAM_HALO
    assert StackPredictOptions().tiling.overlap == BLEND_OVERLAP
    assert StackPredictOptions().tiling.batch_size == BLEND_BATCH_SIZE
    for function in (plan_tiles, predict_tiled, predict_tiled_rows):
        assert inspect.signature(function).parameters["overlap"].default == BLEND_OVERLAP
    for function in (predict_tiled, predict_tiled_rows):
        assert inspect.signature(function).parameters["batch_size"].default == BLEND_BATCH_SIZE
