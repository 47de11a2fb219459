"""What a report is made of: the results of a run, from a manifest or from label files on disk.

The disk edge of the report: reading the manifest (the JSON lines that
``segtool predict/baseline --json`` print and ``--manifest`` appends) and
turning it, or a list of label files, into :class:`Entry` objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtool.errors import InputError

__all__ = ["Entry", "read_manifest", "entries_from_manifest", "entries_from_labels"]


@dataclass
class Entry:
    """One result of the run.

    Attributes
    ----------
    labels : Path or None
        The label image (None for an input that failed in the run).
    image : Path or None
        The image it was made from, when known and still on disk.
    input : str
        The input as the run named it (the label file's path without a manifest).
    status : {"done", "skipped", "failed"}
        As the run recorded it ("done" without a manifest).
    error : str or None
        The run's one-line error of a failed input.
    outputs : dict of str to Path
        Every output the run recorded (labels, prob, overlay, ...), located.
    record : dict
        The manifest's JSON record ({} without one): model, diameter,
        scale, outputs, empty_reason, ...
    """

    labels: Path | None
    image: Path | None
    input: str
    status: str = "done"
    error: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a manifest, in file order (blank lines ignored).

    Raises
    ------
    InputError
        The file cannot be read, a line is not a JSON object, or a record has
        no ``input`` or ``status``; the message names the line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the manifest ({getattr(err, 'strerror', None) or err})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise InputError(f"{path}: line {number} is not JSON (a manifest holds one JSON object per line)") from None
        if not isinstance(record, dict) or "input" not in record or record.get("status") not in ("done", "skipped", "failed"):
            raise InputError(f"{path}: line {number} is not a segtool result (needs 'input' and 'status')")
        records.append(record)
    if not records:
        raise InputError(f"{path}: the manifest holds no results")
    return records


def _locate(name: str | None, base: Path) -> Path | None:
    """``name`` as given when it exists (relative to the working folder), else relative to ``base``."""
    if not name:
        return None
    path = Path(name)
    if path.exists() or path.is_absolute():
        return path
    beside = base / path
    return beside if beside.exists() else path


def entries_from_manifest(records: Sequence[dict[str, Any]], *, base: Path) -> list[Entry]:
    """One :class:`Entry` per input of a manifest; an input recorded more than once keeps its last record.

    Relative paths are taken from the working folder, or else from ``base``
    (the manifest's folder), so a report finds a run made elsewhere.

    Examples
    --------
    >>> records = [{"input": "a.tif", "status": "failed", "error": "boom"},
    ...            {"input": "a.tif", "status": "done", "outputs": {"labels": "a_labels.tif"}, "objects": 3}]
    >>> [(e.input, e.status, e.labels.name) for e in entries_from_manifest(records, base=Path("."))]
    [('a.tif', 'done', 'a_labels.tif')]
    """
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest.pop(str(record["input"]), None)  # the last record's position decides the order
        latest[str(record["input"])] = record
    entries = []
    for name, record in latest.items():
        outputs = {str(k): _locate(str(v), base) for k, v in (record.get("outputs") or {}).items() if v}
        labels = outputs.get("labels")
        image = _locate(name, base)
        if image is not None and not image.is_file():
            image = None  # moved or deleted since the run: the thumbnail shows the labels alone
        status, error = record["status"], record.get("error")
        if status != "failed" and labels is None:
            status, error = "failed", "the record names no label image (outputs.labels)"
        entries.append(Entry(labels=labels, image=image, input=name, status=status, error=error,
                             outputs=outputs, record=record))
    return entries


def entries_from_labels(paths: Sequence[Path]) -> list[Entry]:
    """One :class:`Entry` per label file (their images, if any, are found per file by the task)."""
    return [Entry(labels=Path(p), image=None, input=str(p), outputs={"labels": Path(p)}) for p in paths]
