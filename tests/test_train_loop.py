"""Tests for training data preparation, the training loop, checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from segtool.errors import InputError, ModelError
from segtool.normalize import normalize_percentile
from segtool.train.augment import AugmentOptions
from segtool.model.config import UNetConfig
from segtool.train.dataset import (
    PatchSampler,
    prepare_sample,
    split_validation,
    summarize_pairs,
)
from segtool.model.heads import activate
from segtool.model.modelfile import load_checkpoint, load_model
from segtool.train.options import TrainOptions
from segtool.train.loop import learning_rate_at, train_model, whole_image_logits
from segtool.train.resume import read_checkpoint_settings


def synthetic_pair(rng: np.random.Generator, size: int = 64):
    """Bright disks (some touching) on a dim noisy background, with their labels."""
    labels = np.zeros((size, size), np.uint16)
    for index in range(1, int(rng.integers(3, 7)) + 1):
        radius = int(rng.integers(4, 9))
        centre = rng.integers(radius, size - radius, 2)
        labels[disk(tuple(centre), radius, shape=labels.shape)] = index
    image = (labels > 0) * 100 + rng.normal(20, 8, labels.shape)
    return image.clip(0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    return [synthetic_pair(rng) for _ in range(8)]


def tiny_config(**kwargs) -> UNetConfig:
    values = dict(depth=2, base_channels=8, patch_size=32, postprocess={"min_size": 5})
    values.update(kwargs)
    return UNetConfig(**values)


def tiny_options(**kwargs) -> TrainOptions:
    values = dict(epochs=3, batch_size=4, patches_per_epoch=16, learning_rate=3e-3, device="cpu", patience=0, seed=1)
    values.update(kwargs)
    return TrainOptions(**values)


def weights_of(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- data


def test_prepare_sample_normalises_with_the_shared_function(pairs):
    image, labels = pairs[0]
    config = tiny_config(norm_low=2.0, norm_high=99.0)
    sample = prepare_sample(image, labels, config, name="a")
    assert sample.image.shape == (1, 64, 64) and sample.image.dtype == np.float32
    assert np.array_equal(sample.image[0], normalize_percentile(image, 2.0, 99.0))
    assert sample.target.shape == (1, 64, 64)
    assert np.array_equal(sample.foreground, np.flatnonzero(labels))
    assert prepare_sample(image, labels, tiny_config(target="distance")).target.shape == (2, 64, 64)


@pytest.mark.parametrize(
    "image, labels, match",
    [
        (np.zeros((8, 8)), np.zeros((8, 9), int), "differs from image shape"),
        (np.zeros((8, 8)), np.zeros((8, 8), np.float32), "x.tif: mask label image has dtype float32; expected integer labels"),
        (np.zeros((8, 8)), -np.ones((8, 8), int), "negative"),
        (np.zeros((2, 8, 8)), np.zeros((8, 8), int), "2-D image"),
    ],
)
def test_prepare_sample_refuses_bad_pairs(image, labels, match):
    with pytest.raises(InputError, match=match):
        prepare_sample(image, labels, tiny_config(), name="x.tif")


def test_split_validation_holds_out_whole_images():
    train, val = split_validation(20, 0.15, np.random.default_rng(0))
    assert len(val) == 3 and len(train) == 17
    assert not set(train) & set(val)
    assert np.array_equal(split_validation(20, 0.15, np.random.default_rng(0))[1], val)
    assert len(split_validation(3, 0.01, np.random.default_rng(0))[1]) == 1
    assert len(split_validation(5, 0.0, np.random.default_rng(0))[1]) == 0
    with pytest.raises(InputError, match="at least 2"):
        split_validation(1, 0.2, np.random.default_rng(0))
    with pytest.raises(InputError, match="fraction"):
        split_validation(10, 1.0, np.random.default_rng(0))


def test_summarize_pairs_hash_follows_content(pairs):
    a = summarize_pairs(pairs[:2])
    assert a == summarize_pairs([(p[0].copy(), p[1].copy()) for p in pairs[:2]])
    changed = [(pairs[0][0], pairs[0][1]), (pairs[1][0] + 1, pairs[1][1])]
    assert summarize_pairs(changed)["sha256"] != a["sha256"]
    assert a["objects"] == sum(len(np.unique(p[1])) - 1 for p in pairs[:2])


def test_patch_sampler_foreground_bias_and_determinism():
    labels = np.zeros((256, 256), np.uint16)
    labels[100:106, 200:206] = 1  # one small object in a big image
    image = labels * 50
    sample = prepare_sample(image, labels, tiny_config())
    def fraction_with_object(fg):
        sampler = PatchSampler([sample], patch_size=32, rng=np.random.default_rng(0), foreground_fraction=fg, augment=AugmentOptions.none())
        _, y = sampler.batch(200)
        return float((y.reshape(200, -1).max(axis=1) > 0).mean())
    assert fraction_with_object(1.0) == 1.0
    assert fraction_with_object(0.0) < 0.2
    a = PatchSampler([sample], patch_size=32, rng=np.random.default_rng(5)).batch(4)
    b = PatchSampler([sample], patch_size=32, rng=np.random.default_rng(5)).batch(4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_patch_sampler_mirrors_images_smaller_than_the_patch():
    labels = np.zeros((20, 24), np.uint16)
    labels[5:10, 5:10] = 1
    sample = prepare_sample(labels * 9, labels, tiny_config())
    x, y = PatchSampler([sample], patch_size=32, rng=np.random.default_rng(0)).batch(2)
    assert x.shape == (2, 1, 32, 32) and y.shape == (2, 1, 32, 32)


def test_patches_keep_image_and_target_aligned(pairs):
    # with an image that is its own labels, every augmented patch must match its target
    _, labels = pairs[0]
    sample = prepare_sample(labels, labels, tiny_config(norm_low=0.0, norm_high=100.0))
    sample.image = labels[None].astype(np.float32)
    options = AugmentOptions(intensity_scale=0, intensity_shift=0, noise_std=0)
    x, y = PatchSampler([sample], patch_size=32, rng=np.random.default_rng(0), augment=options).batch(16)
    assert np.array_equal(x > 0, y > 0)


def test_rotating_and_zooming_sampler_keeps_patches_aligned(pairs):
    _, labels = pairs[0]
    sample = prepare_sample(labels, labels, tiny_config(norm_low=0.0, norm_high=100.0))
    sample.image = labels[None].astype(np.float32)
    options = AugmentOptions(intensity_scale=0, intensity_shift=0, noise_std=0, rotate=True, zoom=0.25, elastic=True)
    x, y = PatchSampler([sample], patch_size=32, rng=np.random.default_rng(0), augment=options).batch(16)
    assert x.shape == (16, 1, 32, 32) and y.shape == (16, 1, 32, 32)
    assert set(np.unique(y)) <= set(np.unique(sample.target).tolist())
    # the image is its own labels: linear interpolation against nearest for the target, so object
    # pixels agree except along edges
    assert ((x > 0.5) == (y > 0)).mean() > 0.95


def test_learning_rate_schedule():
    options = TrainOptions(learning_rate=1e-3, min_lr_fraction=0.1)
    lrs = [learning_rate_at(s, total_steps=100, warmup_steps=10, options=options) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    constant = TrainOptions(schedule="constant")
    assert learning_rate_at(90, total_steps=100, warmup_steps=10, options=constant) == constant.learning_rate


def test_options_validate_and_roundtrip():
    options = tiny_options(augment=AugmentOptions(elastic=True))
    assert TrainOptions.from_dict(options.to_dict()) == options
    with pytest.raises(InputError, match="optimizer"):
        TrainOptions(optimizer="sgd")
    with pytest.raises(InputError, match="epochs"):
        TrainOptions(epochs=0)
    with pytest.raises(InputError, match="precision"):
        TrainOptions(precision="fp16")
    # checkpoints and model files written before the precision option existed read back as float32
    old = tiny_options().to_dict()
    del old["precision"]
    assert TrainOptions.from_dict(old).precision == "fp32"
    with pytest.raises(InputError, match="ema_decay"):
        TrainOptions(ema_decay=1.0)
    del old["ema_decay"]
    assert TrainOptions.from_dict(old).ema_decay == 0.0
    with pytest.raises(InputError, match="workers must be an integer >= 0"):
        TrainOptions(workers=-1)
    del old["workers"]
    assert TrainOptions.from_dict(old).workers == 0


# ---------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("target", ["three_class", "distance", "three_class_distance"])
def test_tiny_training_loss_falls_and_saved_model_predicts(pairs, tmp_path, target):
    steps, epochs = [], []
    result = train_model(
        pairs[:6],
        pairs[6:],
        tiny_config(target=target),
        options=tiny_options(epochs=5),
        checkpoint_dir=tmp_path / "ckpt",
        on_step=steps.append,
        on_epoch=epochs.append,
    )
    assert result.stop_reason == "completed"
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5]
    assert len([s for s in steps if s.phase == "train"]) == 5 * 4
    assert len([s for s in steps if s.phase == "val"]) == 5 * 2
    history = result.history
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_loss < history[0].val_loss
    assert all(0.0 <= h.val_f1 <= 1.0 for h in history)
    assert result.best_epoch >= 1 and result.best is not None
    assert not result.net.training
    # best.pt is an ordinary model file
    loaded = load_model(result.best_checkpoint)
    assert loaded.config == result.config
    assert loaded.metadata["best_epoch"] == result.best_epoch
    assert loaded.metadata["training_data"]["images"] == 6
    image, labels = pairs[6]
    sample = prepare_sample(image, labels, loaded.config)
    with torch.no_grad():
        maps = activate(whole_image_logits(loaded.net, sample.image), loaded.config.target)
    assert tuple(maps.shape) == (loaded.config.out_channels, 64, 64)
    assert torch.isfinite(maps).all()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_the_synthetic_task(pairs, tmp_path, precision):
    result = train_model(
        pairs[:6],
        pairs[6:],
        tiny_config(target="distance"),
        options=tiny_options(epochs=8, patches_per_epoch=32, precision=precision),
        checkpoint_dir=tmp_path,
    )
    assert result.best.val_f1 >= 0.6


@pytest.mark.slow
def test_bf16_training_is_reproducible_and_stores_plain_float32_weights(pairs, tmp_path):
    config, options = tiny_config(), tiny_options(epochs=1, precision="bf16")
    a = train_model(pairs[:4], pairs[6:7], config, options=options, checkpoint_dir=tmp_path / "a")
    b = train_model(pairs[:4], pairs[6:7], config, options=options, checkpoint_dir=tmp_path / "b")
    fp32 = train_model(pairs[:4], pairs[6:7], config, options=tiny_options(epochs=1), checkpoint_dir=tmp_path / "c")
    assert same_weights(weights_of(a.net), weights_of(b.net))
    # rounding in the forward pass changes the weights: the option really reaches the loop
    assert not same_weights(weights_of(a.net), weights_of(fp32.net))
    best_file = torch.load(a.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    resumable = load_checkpoint(a.last_checkpoint)["model"]
    for stored in (best_file, resumable):
        for name, tensor in stored.items():
            assert tensor.is_contiguous(), name
            assert tensor.dtype in (torch.float32, torch.int64), name
    assert read_checkpoint_settings(a.last_checkpoint)[1].precision == "bf16"


@pytest.mark.slow
def test_same_seed_same_weights_and_other_seed_differs(pairs, tmp_path):
    config, options = tiny_config(), tiny_options(epochs=1)
    a = train_model(pairs[:4], pairs[6:7], config, options=options, checkpoint_dir=tmp_path / "a")
    b = train_model(pairs[:4], pairs[6:7], config, options=options, checkpoint_dir=tmp_path / "b")
    c = train_model(pairs[:4], pairs[6:7], config, options=tiny_options(epochs=1, seed=2), checkpoint_dir=tmp_path / "c")
    assert same_weights(weights_of(a.net), weights_of(b.net))
    assert not same_weights(weights_of(a.net), weights_of(c.net))


@pytest.mark.slow
def test_same_seed_and_worker_count_give_the_same_weights(pairs, tmp_path):
    config = tiny_config()
    options = {w: tiny_options(epochs=2, workers=w, augment=AugmentOptions(elastic=True)) for w in (0, 1, 2)}

    def train(workers, name):
        return train_model(pairs[:4], pairs[6:7], config, options=options[workers], checkpoint_dir=tmp_path / name)

    none = [weights_of(train(0, f"none{i}").net) for i in range(2)]
    two = [weights_of(train(2, f"two{i}").net) for i in range(2)]
    one = weights_of(train(1, "one").net)
    assert same_weights(*none) and same_weights(*two)
    # which worker makes a batch does not matter: any count >= 1 gives the same patches
    assert same_weights(one, two[0])
    # workers draw their patches by another scheme than the training process (documented)
    assert not same_weights(none[0], two[0])
    assert read_checkpoint_settings(tmp_path / "two0" / "last.pt")[1].workers == 2


@pytest.mark.slow  # PyTorch notices a dead worker within its 5 s status check
def test_a_killed_data_worker_ends_training_with_a_one_line_error(pairs, tmp_path):
    import os
    import signal

    import psutil

    from segtool.errors import SegtoolError

    me = psutil.Process()
    others = {p.pid for p in me.children(recursive=True)}  # e.g. processes of other tests: never touch them
    workers = []

    def kill_a_worker(step) -> None:
        if not workers:
            workers.extend(p for p in me.children(recursive=True) if p.pid not in others)
            os.kill(workers[0].pid, signal.SIGKILL)

    options = tiny_options(epochs=200, patches_per_epoch=64, workers=2)
    with pytest.raises(SegtoolError, match=r"^data worker process stopped: .*use fewer --workers$"):
        train_model(pairs[:4], [], tiny_config(), options=options, checkpoint_dir=tmp_path, on_step=kill_a_worker)
    assert len(workers) >= 2
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


# stop_requested is polled before each of the 4 steps and each of the 2 validation images of an epoch:
# after 8 calls it stops in the middle of epoch 2's training, after 10 before its validation.
@pytest.mark.slow
@pytest.mark.parametrize(
    "stop_after, step_in_epoch, precision, ema, workers, resume_with",
    [
        (8, 2, "fp32", 0.0, 0, 0),
        (10, 4, "fp32", 0.0, 0, 0),
        (8, 2, "bf16", 0.0, 0, 0),
        (8, 2, "fp32", 0.9, 0, 0),
        (8, 2, "fp32", 0.0, 2, 2),
        (10, 4, "fp32", 0.0, 2, 1),
    ],
)
def test_interrupt_and_resume_gives_the_uninterrupted_result(
    pairs, tmp_path, stop_after, step_in_epoch, precision, ema, workers, resume_with
):
    import psutil

    config, options = tiny_config(), tiny_options(epochs=3, precision=precision, ema_decay=ema, workers=workers)
    train, val = pairs[:5], pairs[6:]
    others = {p.pid for p in psutil.Process().children(recursive=True)}
    full = train_model(train, val, config, options=options, checkpoint_dir=tmp_path / "full")

    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > stop_after

    first = train_model(train, val, config, options=options, checkpoint_dir=tmp_path / "part", stop_requested=stop)
    assert first.stop_reason == "interrupted"
    assert first.last_checkpoint.exists()
    saved = load_checkpoint(first.last_checkpoint)
    assert isinstance(saved["torch_rng"], torch.Tensor)
    _, _, state = read_checkpoint_settings(first.last_checkpoint)
    assert (state["loop"]["epoch"], state["loop"]["step"]) == (1, step_in_epoch)
    # the interrupted run left no data worker behind
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= others
    options = tiny_options(epochs=3, precision=precision, ema_decay=ema, workers=resume_with)
    resumed = train_model(
        train, val, config, options=options, checkpoint_dir=tmp_path / "part", resume_from=first.last_checkpoint
    )
    assert resumed.stop_reason == "completed"
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in full.history]
    assert [h.val_f1 for h in resumed.history] == [h.val_f1 for h in full.history]
    assert resumed.best_epoch == full.best_epoch
    assert same_weights(weights_of(resumed.net), weights_of(full.net))


@pytest.mark.slow
def test_resume_refuses_other_options_data_and_files(pairs, tmp_path):
    config, options = tiny_config(), tiny_options(epochs=1)
    result = train_model(pairs[:3], pairs[6:7], config, options=options, checkpoint_dir=tmp_path)
    last = result.last_checkpoint
    stored_config, stored_options, state = read_checkpoint_settings(last)
    assert stored_config == config and stored_options == options and state["loop"]["epoch"] == 1
    with pytest.raises(ModelError, match="different training options: batch_size"):
        train_model(pairs[:3], pairs[6:7], config, options=tiny_options(epochs=1, batch_size=2), checkpoint_dir=tmp_path, resume_from=last)
    with pytest.raises(ModelError, match="different training options: workers"):
        # patches drawn in the training process cannot continue as patches drawn by workers
        train_model(pairs[:3], pairs[6:7], config, options=tiny_options(epochs=1, workers=2), checkpoint_dir=tmp_path, resume_from=last)
    with pytest.raises(ModelError, match="different network config"):
        train_model(pairs[:3], pairs[6:7], tiny_config(base_channels=4), options=options, checkpoint_dir=tmp_path, resume_from=last)
    with pytest.raises(ModelError, match="different training images"):
        train_model(pairs[1:4], pairs[6:7], config, options=options, checkpoint_dir=tmp_path, resume_from=last)
    with pytest.raises(ModelError, match="finished model file"):
        train_model(pairs[:3], pairs[6:7], config, options=options, checkpoint_dir=tmp_path, resume_from=result.best_checkpoint)
    # a finished run resumed again has nothing left to do
    again = train_model(pairs[:3], pairs[6:7], config, options=options, checkpoint_dir=tmp_path, resume_from=last)
    assert again.stop_reason == "completed" and len(again.history) == 1


@pytest.mark.slow
def test_early_stopping_and_best_epoch_choice(pairs, tmp_path, monkeypatch):
    import segtool.train.loop as train_module

    # scripted validation results: (loss, F1); equal F1 with lower loss counts as better
    script = iter([(1.0, 0.5), (0.9, 0.5), (0.8, 0.7), (0.7, 0.6), (0.6, 0.7), (0.5, 0.2), (0.4, 0.1)])

    def fake_validate(*args, **kwargs):
        loss, f1 = next(script)
        return loss, f1, f1 / 2, f1 / 4

    monkeypatch.setattr(train_module, "_validate", fake_validate)
    options = tiny_options(epochs=10, patience=2, patches_per_epoch=4)
    result = train_model(pairs[:2], pairs[6:7], tiny_config(), options=options, checkpoint_dir=tmp_path / "a")
    assert result.stop_reason == "early_stopped"
    assert [h.improved for h in result.history] == [True, True, True, False, True, False, False]
    assert result.best_epoch == 5 and result.best.val_f1 == 0.7 and result.best.val_loss == 0.6
    assert load_model(result.best_checkpoint).metadata["best_epoch"] == 5


def test_update_average_follows_the_ramped_decay():
    from segtool.train.ema import average_decay, update_average

    average, net = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        average.weight.fill_(0.0)
        net.weight.fill_(1.0)
    net.num_batches_tracked.fill_(7)
    # step 1: decay capped at 2/11, so the average moves 9/11 of the way
    update_average(average, net, decay=0.999, step=1)
    assert torch.allclose(average.weight, torch.full((2,), 9 / 11))
    assert int(average.num_batches_tracked) == 7  # integer buffers are copied, not averaged
    update_average(average, net, decay=0.5, step=1000)
    assert torch.allclose(average.weight, torch.full((2,), 9 / 11 + (2 / 11) / 2))
    assert average_decay(0.999, 10**6) == 0.999 and average_decay(0.999, 8) == 0.5


@pytest.mark.slow
def test_weight_average_is_validated_and_saved_without_changing_training(pairs, tmp_path, monkeypatch):
    import segtool.train.loop as train_module

    validated = []

    def fake_validate(net, *args, epoch, **kwargs):
        validated.append(weights_of(net))
        f1 = 0.2 * epoch  # every epoch improves, so the last one is the best
        return 1.0 - f1, f1, f1, f1

    monkeypatch.setattr(train_module, "_validate", fake_validate)
    config = tiny_config()
    plain = train_model(pairs[:4], pairs[6:7], config, options=tiny_options(), checkpoint_dir=tmp_path / "plain")
    averaged = train_model(pairs[:4], pairs[6:7], config, options=tiny_options(ema_decay=0.9), checkpoint_dir=tmp_path / "ema")
    plain_last = load_checkpoint(plain.last_checkpoint)
    ema_last = load_checkpoint(averaged.last_checkpoint)
    # the trained weights follow the same path; only what is validated and kept differs
    assert same_weights(plain_last["model"], ema_last["model"])
    assert "average_model" not in plain_last
    assert not same_weights(ema_last["average_model"], ema_last["model"])
    assert same_weights(validated[-1], ema_last["average_model"])
    assert same_weights(weights_of(averaged.net), ema_last["average_model"])
    assert same_weights(weights_of(load_model(averaged.best_checkpoint).net), ema_last["average_model"])
    assert load_model(averaged.best_checkpoint).metadata["options"]["ema_decay"] == 0.9


@pytest.mark.slow
def test_no_validation_picks_lowest_training_loss(pairs, tmp_path):
    # without validation images the best epoch is the lowest training loss
    result = train_model(pairs[:2], [], tiny_config(), options=tiny_options(epochs=3, patches_per_epoch=4), checkpoint_dir=tmp_path / "b")
    assert all(h.val_f1 is None and h.val_loss is None for h in result.history)
    losses = [h.train_loss for h in result.history]
    assert result.best_epoch == 1 + int(np.argmin(losses))


def test_train_model_refuses_empty_and_bad_input(pairs, tmp_path):
    with pytest.raises(InputError, match="no training images"):
        train_model([], pairs[:1], tiny_config(), options=tiny_options(), checkpoint_dir=tmp_path)
    bad = [(pairs[0][0], pairs[0][1][:10])]
    with pytest.raises(InputError, match="a.tif: mask shape"):
        train_model(bad, [], tiny_config(), options=tiny_options(), checkpoint_dir=tmp_path, train_names=["a.tif"])


def _ring_is_closed(classes: np.ndarray) -> bool:
    """No interior pixel (1) has a background 4-neighbour (0): every object is outlined by boundary pixels."""
    interior = classes == 1
    padded = np.pad(classes, 1, mode="edge")
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    return not any(np.any(interior & (n == 0)) for n in neighbours)


@pytest.mark.parametrize("target", ["three_class", "three_class_distance"])
def test_zoomed_patches_get_class_targets_made_again_at_their_scale(target):
    labels = np.zeros((96, 96), np.uint16)
    for index, centre in enumerate([(20, 20), (20, 60), (60, 30), (70, 75)], start=1):
        labels[disk(centre, 11)] = index
    labels[disk((60, 44), 9)] = 5  # touches object 3
    sample = prepare_sample(labels * 40, labels, tiny_config(target=target))
    options = AugmentOptions(zoom=1.0, intensity_scale=0, intensity_shift=0, noise_std=0)
    fixed = PatchSampler([sample], patch_size=48, rng=np.random.default_rng(0), augment=options, target=target).batch(24)
    warped = PatchSampler([sample], patch_size=48, rng=np.random.default_rng(0), augment=options).batch(24)
    assert fixed[1].shape == warped[1].shape == (24, sample.target.shape[0], 48, 48)
    assert np.array_equal(fixed[0], warped[0])  # the same draws, the same images
    assert all(_ring_is_closed(classes) for classes in fixed[1][:, 0])
    # warping the class map itself breaks outlines when zooming out (the reason for making them again)
    assert not all(_ring_is_closed(classes) for classes in warped[1][:, 0])
    if target == "three_class_distance":
        assert np.array_equal(fixed[1][:, 1], warped[1][:, 1])  # the scale-free distance is warped as it was
