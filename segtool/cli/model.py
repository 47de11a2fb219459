"""``segtool model info``, ``list`` and ``export``: what a model file holds, the shipped models, exports for other tools."""

from __future__ import annotations

import json
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from segtool.batch import EXIT_USAGE
from segtool.cli.application import app
from segtool.cli.messages import exit_on_error, print_error
from segtool.cli.options import Debug
from segtool.errors import SegtoolError, first_line
from segtool.intake import INPUT_TRANSFORMS

model_app = typer.Typer(
    name="model",
    help="Inspect U-Net model files, list the shipped ones, or export them for bioimage.io, Fiji/deepImageJ, QuPath and ONNX runtimes.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.add_typer(model_app, name="model", rich_help_panel="U-Net")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for a model card written by ``bench/model_card.py`` (data set, licence, hardware, test scores)."""
    rows = []
    if card.get("dataset"):
        rows.append(("data set", card["dataset"] + (f" (licence: {card['licence']})" if card.get("licence") else "")))
    if card.get("hardware"):
        rows.append(("trained on", card["hardware"]))
    test = card.get("test")
    if test:
        curve = " ".join(_fmt(ap, 2) for ap in test.get("ap_curve", []))
        rows.append((
            "test scores",
            f"{test.get('images')} images, {_count(test.get('objects'))} objects: AP@0.5 {_fmt(test.get('ap_iou50'))}, "
            f"AP@0.7 {_fmt(test.get('ap_iou70'))}, F1@0.5 {_fmt(test.get('f1_iou50'))}, "
            f"mean AP@0.5:0.95 {_fmt(test.get('ap_mean'))}",
        ))
        if curve:
            rows.append(("AP curve", f"IoU 0.5..0.95: {curve}"))
        if test.get("command"):
            rows.append(("scored with", test["command"]))
    return rows


def lineage(parent: dict[str, Any] | None) -> str:
    """One line naming a model's parent, its parent, and so on (``--init`` chains).

    Examples
    --------
    >>> lineage({"name": "nuclei", "sha256": "ab" * 32, "segtool_version": "0.1.0", "parent": None})
    'fine-tuned from nuclei (sha256 abababababababab, segtool 0.1.0)'
    """
    parts = []
    while isinstance(parent, dict) and len(parts) < 20:
        version = f", segtool {parent['segtool_version']}" if parent.get("segtool_version") else ""
        parts.append(f"{parent.get('name', '?')} (sha256 {str(parent.get('sha256', ''))[:16]}{version})")
        parent = parent.get("parent")
    return "fine-tuned from " + " <- ".join(parts) if parts else ""


def describe(info: dict[str, Any]) -> str:
    """Human-readable summary of :func:`segtool.model.modelinfo.read_model_info` output.

    Examples
    --------
    >>> text = describe({"path": "m.pt", "format": "segtool-unet", "format_version": 1, "parameters": 10,
    ...     "file_bytes": 2048, "metadata": {}, "config": {"depth": 2, "base_channels": 4, "in_channels": 1,
    ...     "out_channels": 3, "target": "three_class", "norm_low": 1.0, "norm_high": 99.8, "patch_size": 64,
    ...     "postprocess": {}}})
    >>> text.splitlines()[1]
    'architecture     U-Net, depth 2, 4 base channels, 1 input channel(s), 3 outputs (three_class)'
    """
    config = info["config"]
    meta = info.get("metadata") or {}
    architecture = (
        f"U-Net, depth {config['depth']}, {config['base_channels']} base channels, "
        f"{config['in_channels']} input channel(s), {config['out_channels']} outputs ({config['target']})"
    )
    rows = [
        ("architecture", architecture),
        ("input size", f"any multiple of {2 ** config['depth']} px (predict pads); trained on {config['patch_size']} px patches"),
        ("input", "colour: R, G, B as 3 channels (--channels rgb; grey files repeated)" if config.get("channels") == "rgb"
         else "one channel made from R, G, B (see transform)" if config.get("input") == "hematoxylin"
         else "grey (RGB files averaged to one channel)" if config["in_channels"] == 1 else f"{config['in_channels']} channels"),
        ("transform", f"{config.get('input', 'intensity')}: {INPUT_TRANSFORMS.get(config.get('input', 'intensity'), '?')}"),
        ("normalisation", f"per-image{' and per-channel' if config['in_channels'] > 1 else ''} percentiles "
         f"{config['norm_low']:g} / {config['norm_high']:g} mapped to 0 / 1"),
        ("postprocess", ", ".join(f"{k}={v}" for k, v in config.get("postprocess", {}).items()) or "defaults"),
    ]
    if meta:
        trained = f"{meta.get('epochs_run', '?')} of {meta.get('epochs_planned', '?')} epochs"
        if meta.get("best_epoch"):
            trained += f", best epoch {meta['best_epoch']}"
        if meta.get("stop_reason"):
            trained += f" ({meta['stop_reason'].replace('_', ' ')})"
        rows.append(("trained", trained))
        created = " ".join(
            part for part in (
                meta.get("created"),
                f"segtool {meta['segtool_version']}" if meta.get("segtool_version") else None,
                f"torch {meta['torch_version']}" if meta.get("torch_version") else None,
                f"on {meta['device']}" if meta.get("device") else None,
                # models trained before the precision option have none recorded: they ran in float32
                f"({(meta.get('options') or {}).get('precision', 'fp32')})" if meta.get("options") else None,
            ) if part
        )
        if created:
            rows.append(("created", created))
        # a card's measured figure stands in for models trained before segtool recorded its own
        measured = (meta.get("card") or {}).get("training_time")
        if measured or meta.get("training_seconds") is not None:
            rows.append(("training time", measured or _duration(meta["training_seconds"])))
        data = meta.get("training_data")
        if data:
            diameter = f", median diameter {data['median_diameter']} px" if data.get("median_diameter") else ""
            text = (
                f"{data.get('images')} images, {_count(data.get('objects'))} objects{diameter}, "
                f"{_count(data.get('pixels'))} pixels, sha256 {str(data.get('sha256', ''))[:16]}"
            )
            rows.append(("training data", text))
        val = meta.get("validation")
        if val:
            text = (
                f"{val.get('images')} images: F1@0.5 {_fmt(val.get('f1_iou50'))}, "
                f"AP@0.5 {_fmt(val.get('ap_iou50'))}, AP@0.5:0.95 {_fmt(val.get('ap_iou50_95'))}, "
                f"loss {_fmt(val.get('loss'), 4)}"
            )
            rows.append(("validation", text))
        if meta.get("command"):
            rows.append(("command", meta["command"]))
        if meta.get("parent"):
            rows.append(("lineage", lineage(meta["parent"])))
        rows.extend(_card_rows(meta.get("card") or {}))
    size = info["file_bytes"] / 2**20
    head = f"{info['path']}  ({info['format']} v{info['format_version']}, {info['parameters']:,} parameters, {size:.1f} MiB)"
    width = max(len(name) for name, _ in rows) + 4
    return "\n".join([head] + [f"{name:<{width}}{value}" for name, value in rows])


@model_app.command("info")
def info(
    models: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Model files (.pt) written by segtool train, or shipped models' names. Default: the default shipped model.",
            show_default=False,
            metavar="MODEL",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per model (config and metadata).")] = False,
    debug: Debug = False,
) -> None:
    """Print a model's architecture, normalisation, target, training data and validation scores."""
    from segtool.model.modelinfo import read_model_info
    from segtool.model.shipped import resolve_model

    failed = 0
    for index, path in enumerate(models or [None]):
        try:
            details = read_model_info(resolve_model(path)[0])
        except SegtoolError as err:
            if debug:
                traceback.print_exc()
            print_error(str(path), first_line(err))
            failed += 1
            continue
        if json_out:
            print(json.dumps(details), flush=True)
        else:
            if index:
                print()
            print(describe(details), flush=True)
    raise typer.Exit(1 if failed else 0)


@model_app.command("list")
def list_models(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per shipped model.")] = False,
) -> None:
    """List the models shipped with segtool (use a name with -m, --init or model info)."""
    from segtool.model.modelinfo import read_model_info
    from segtool.model.shipped import DEFAULT_MODEL, SHIPPED_MODELS, find_shipped_model

    for shipped in SHIPPED_MODELS:
        record: dict[str, Any] = {"name": shipped.name, "default": shipped.name == DEFAULT_MODEL, "summary": shipped.summary}
        try:
            info = read_model_info(find_shipped_model(shipped.name))
        except SegtoolError as err:
            record.update(installed=False, card=first_line(err))
        else:
            test = ((info["metadata"].get("card") or {}).get("test")) or {}
            dataset = (info["metadata"].get("card") or {}).get("dataset")
            card = f"test AP@0.5 {_fmt(test.get('ap_iou50'))}, AP@0.7 {_fmt(test.get('ap_iou70'))}" if test else "no card"
            record.update(installed=True, path=info["path"], dataset=dataset, in_channels=info["config"]["in_channels"],
                          card=card + (f"; trained on {dataset}" if dataset else ""))
        if json_out:
            print(json.dumps(record), flush=True)
        else:
            flag = " (default)" if record["default"] else ""
            print(f"{shipped.name:<12}{shipped.summary}{flag}\n{'':<12}{record['card']}", flush=True)


class ExportFormat(str, Enum):
    bioimageio = "bioimageio"
    torchscript = "torchscript"
    onnx = "onnx"


_SUFFIXES = {"bioimageio": ".zip", "torchscript": ".pt", "onnx": ".onnx"}


def _sample_image(sample: Path | None, *, colour: bool = False, stained: bool = False) -> tuple[Any, str]:
    """The raw image the package's test tensors and cover come from, and where it came from.

    ``colour``: for a ``--channels rgb`` model, (3, Y, X) as predict reads it (the synthetic image repeated).
    ``stained``: for a ``hematoxylin`` model, the synthetic nuclei as 8-bit RGB of hematoxylin on light eosin.
    """
    if sample is not None:
        from segtool.io import read_image

        return read_image(sample, colour=colour).data, str(sample)
    import numpy as np

    from segtool.synthetic import make_nuclei_image

    image, _ = make_nuclei_image((256, 256), seed=0)
    if stained:
        from segtool.intake import STAIN_RGB

        amount = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
        density = amount[np.newaxis] * STAIN_RGB[0][:, None, None] + 0.15 * STAIN_RGB[1][:, None, None]
        rgb = np.clip(np.round(255 * 10.0 ** -density), 0, 255).astype(np.uint8)
        return rgb, "a synthetic stained nuclei image (segtool.synthetic, seed 0, 8-bit RGB)"
    if colour:
        image = np.repeat(image[np.newaxis], 3, axis=0)
    return image, "a synthetic nuclei image (segtool.synthetic, seed 0)"


@model_app.command("export")
def export(
    model: Annotated[
        Optional[Path],
        typer.Argument(help="Model file (.pt) written by segtool train. Default: the pretrained model shipped with segtool.",
                       show_default=False, metavar="MODEL"),
    ] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="bioimageio: a bioimage.io model package (.zip); "
                                              "torchscript: for QuPath and Fiji/deepImageJ; onnx: for onnxruntime.")]
    = ExportFormat.bioimageio,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.zip, .pt or .onnx).",
                                         show_default=False)] = ...,  # type: ignore[assignment]
    sample: Annotated[Optional[Path], typer.Option("--sample", help="Image whose centred crop (at most 256 px) is the "
                                                   "test tensor and the cover. Default: a synthetic nuclei image.",
                                                   show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="bioimageio: package name (default from the model file).",
                                                show_default=False)] = None,
    authors: Annotated[Optional[list[str]], typer.Option("--author", help="bioimageio: an author's name (repeat for "
                                                         "several). Default: segtool developers.", show_default=False)] = None,
    license_id: Annotated[str, typer.Option("--license", help="bioimageio: SPDX licence of the weights.")] = "BSD-3-Clause",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    debug: Debug = False,
) -> None:
    """Export a model for other tools: a bioimage.io package, TorchScript or ONNX.

    The exported network outputs probability maps (softmax classes, sigmoid distance).

    segtool's seeds and watershed are not part of it: `segtool predict -m package.zip` applies them.

    A model with an input transform (nuclei-he) carries it inside: its export reads the raw image (R, G, B).

    TorchScript and ONNX are checked against PyTorch (max difference <= 1e-4) before they are written.
    """
    from segtool.model.modelfile import load_model
    from segtool.model.shipped import resolve_model

    with exit_on_error(debug):
        model_path = resolve_model(model)[0]
    with exit_on_error(debug, where=str(model_path), code=EXIT_USAGE):  # an unusable model file, as predict -m
        loaded = load_model(model_path, device="cpu")
    with exit_on_error(debug, where=str(sample) if sample else None):
        image, origin = _sample_image(sample, colour=loaded.config.reads_colour,
                                      stained=loaded.config.input == "hematoxylin")
    suffix = _SUFFIXES[fmt.value]
    if output.suffix.lower() != suffix:
        print(f"segtool: note: {fmt.value} files usually end in {suffix}", file=sys.stderr)
    try:
        if fmt is ExportFormat.bioimageio:
            from segtool.interop.bioimageio import PackageOptions, export_bioimageio

            options = PackageOptions(name=name, authors=tuple(authors or ("segtool developers",)), license=license_id)
            export_bioimageio(loaded, output, image, options=options, overwrite=overwrite,
                              source_name=Path(model_path).stem)
            print(f"segtool: bioimage.io package validated; test tensors and cover from {origin}", file=sys.stderr)
        else:
            from segtool.interop.bioimageio import prepare_test_image, scale_range
            from segtool.interop.netexport import export_checked, export_white_level

            config = loaded.config
            white = export_white_level(image) if config.input == "hematoxylin" else 255.0
            batch = prepare_test_image(image, config)
            if config.input == "intensity":
                batch = scale_range(batch, config.norm_low, config.norm_high)
                reads = "input normalised"
            else:  # the transform and the normalisation are inside the exported network
                reads = (f"input raw R, G, B with white {white:g}" if config.input == "hematoxylin" else "input raw")
                reads += f", {config.input} and normalisation inside"
            check = export_checked(loaded, output, fmt.value, batch, overwrite=overwrite, white_level=white)
            shapes = " and ".join("x".join(map(str, s)) for s in check.shapes)
            print(f"segtool: {fmt.value} matches PyTorch to {check.max_abs_diff:.1e} (max abs difference on {shapes}; "
                  f"{reads}, sizes multiples of {config.size_multiple})", file=sys.stderr)
    except SegtoolError as err:
        if debug:
            traceback.print_exc()
        message = first_line(err)
        # output errors already start with the path; others get it in front
        print_error(None if message.startswith(str(output)) else str(output), message)
        raise typer.Exit(1) from None
    print(output, flush=True)
