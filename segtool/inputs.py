"""Turning command-line inputs into a list of files, and naming outputs.

Inputs may mix files, folders, glob patterns and ``-`` (a newline-separated
list of paths on standard input). Folder expansion is sorted, non-recursive
unless asked, skips hidden files and, for commands that take raw images, skips
the files segtool itself writes, so re-running a command on a folder that
holds earlier results does not segment the results.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segtool.io import IMAGE_SUFFIXES, is_zarr_store

__all__ = [
    "OUTPUT_SUFFIXES",
    "LABEL_SUFFIXES",
    "ExpandedInputs",
    "expand_inputs",
    "output_path",
    "base_stem",
]

#: Name endings of every file segtool writes next to an image (see README, "Output names").
OUTPUT_SUFFIXES = (
    "_labels.tif",
    "_labels.ome.zarr",
    "_background.tif",
    "_corrected.tif",
    "_prob.tif",
    "_overlay.png",
    "_binary.tif",
    "_labels.png",
    "_rois.zip",
    "_objects.csv",
    ".geojson",
)

#: Name endings of label images made by segtool or other tools; stripped to pair masks with images.
LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_cp_masks", "_seg")

# Outputs that are never label images, skipped even when a command reads labels.
_NON_LABEL_OUTPUTS = ("_background.tif", "_corrected.tif", "_prob.tif", "_overlay.png", "_labels.png")


@dataclass
class ExpandedInputs:
    """Files found for a command, and the input specs that matched nothing.

    Attributes
    ----------
    files : list of Path
        Files in the order given (folders and globs sorted), without duplicates.
    problems : list of (str, str)
        ``(spec, message)`` for each input that names nothing usable; the CLI
        reports each as a failed input and carries on with the rest.
    """

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(
    specs: Sequence[str],
    *,
    recursive: bool = False,
    kind: str = "image",
    stdin_lines: Iterable[str] | None = None,
) -> ExpandedInputs:
    """Expand files, folders, glob patterns and ``-`` into a list of files.

    Parameters
    ----------
    specs : sequence of str
        What the user typed. ``-`` stands for the lines of ``stdin_lines``.
    recursive : bool, optional
        Descend into sub-folders of folder inputs (and let ``**`` in globs
        match across folders).
    kind : {"image", "labels"}, optional
        What the command reads. For ``"image"`` folder and glob expansion skip
        segtool's own outputs; for ``"labels"`` they keep label images
        (``*_labels.tif``) and skip only outputs that are not labels.
    stdin_lines : iterable of str, optional
        Lines read from standard input; required when ``-`` is among ``specs``.
        For ``"labels"``, listed files that segtool writes and that are not
        label images (overlays, tables, ROI sets) are passed over, so the full
        list of files a command printed can be piped into ``export -``.

    Returns
    -------
    ExpandedInputs

    Examples
    --------
    >>> expand_inputs(["does-not-exist.tif"]).files
    [PosixPath('does-not-exist.tif')]
    """
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
    found = ExpandedInputs()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve() if path.exists() else path.absolute()
        if key not in seen:
            seen.add(key)
            found.files.append(path)

    for spec in specs:
        if spec == "-":
            if stdin_lines is None:
                found.problems.append(("-", "no list of paths on standard input"))
                continue
            for line in stdin_lines:
                line = line.strip()
                if line and not line.startswith("#") and not (kind == "labels" and _other_output(line)):
                    # Each listed path is taken literally (no globbing) but folders still expand.
                    _expand_one(line, recursive, kind, add, found, allow_glob=False)
            continue
        _expand_one(spec, recursive, kind, add, found, allow_glob=True)
    return found


def _expand_one(spec, recursive, kind, add, found, *, allow_glob):
    path = Path(spec).expanduser()
    if path.is_dir() and not is_zarr_store(path):
        matches = _folder_images(path, recursive, kind)
        if not matches:
            endings = ", ".join((*IMAGE_SUFFIXES, ".zarr") if kind == "image" else IMAGE_SUFFIXES)
            # the folders below may hold the images (a screen in plate folders): point at --recursive
            below = [] if recursive else _folder_images(path, True, kind)
            hint = (f"; its sub-folders hold {len(below)} (add --recursive)" if below else "")
            found.problems.append((spec, f"folder has no image files ({endings}){hint}"))
        for match in matches:
            add(match)
    elif allow_glob and glob.has_magic(spec) and not path.exists():
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=recursive))]
        matches = [p for p in matches if (p.is_file() or is_zarr_store(p)) and _is_candidate(p, kind)]
        if not matches:
            found.problems.append((spec, "no image file matches this pattern"))
        for match in matches:
            add(match)
    else:
        # A named file is taken as given, even with an unusual name: reading it reports any problem.
        add(path)


def _folder_images(folder: Path, recursive: bool, kind: str) -> list[Path]:
    """Image files and Zarr stores in ``folder`` (never looking inside a store), sorted."""
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() or is_zarr_store(entry):
            if _is_candidate(entry, kind):
                found.append(entry)
        elif recursive and entry.is_dir():
            found.extend(_folder_images(entry, recursive, kind))
    return found


def _other_output(name: str) -> bool:
    """Whether ``name`` is a file segtool writes that is not a label image."""
    name = name.lower()
    return name.endswith(_NON_LABEL_OUTPUTS) or name.endswith(("_rois.zip", "_objects.csv", ".geojson"))


def _is_candidate(path: Path, kind: str) -> bool:
    name = path.name.lower()
    zarr = kind == "image" and name.endswith(".zarr")  # labels commands read TIFF/PNG only
    if name.startswith(".") or not (name.endswith(IMAGE_SUFFIXES) or zarr):
        return False
    skipped = OUTPUT_SUFFIXES if kind == "image" else _NON_LABEL_OUTPUTS
    return not name.endswith(skipped)


def base_stem(path: Path) -> str:
    """File name without its image extension (``a.ome.tif`` -> ``a``).

    Examples
    --------
    >>> base_stem(Path("cells/img01.ome.tiff"))
    'img01'
    """
    name = path.name
    lower = name.lower()
    for ending in (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr", *IMAGE_SUFFIXES):
        if lower.endswith(ending):
            return name[: -len(ending)]
    return path.stem


def output_path(input_path: Path, suffix: str, *, output_dir: Path | None = None) -> Path:
    """Where the output with ``suffix`` for ``input_path`` goes.

    ``<output_dir or the input's folder>/<stem><suffix>``, e.g.
    ``img01.tif`` -> ``img01_labels.tif``.

    Examples
    --------
    >>> output_path(Path("data/img01.tif"), "_labels.tif")
    PosixPath('data/img01_labels.tif')
    >>> output_path(Path("data/img01.tif"), "_labels.tif", output_dir=Path("out"))
    PosixPath('out/img01_labels.tif')
    """
    folder = output_dir if output_dir is not None else input_path.parent
    return folder / f"{base_stem(input_path)}{suffix}"
