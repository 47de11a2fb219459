"""Models shipped inside the segtool package, by name.

A shipped model is an ordinary model file in ``segtool/models/``; its name
(``nuclei``, ``nuclei-he``) is what ``-m``, ``--init`` and ``model list``
accept. Anything else given where a model is expected is a file path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segtool.errors import ModelError

__all__ = ["DEFAULT_MODEL", "SHIPPED_MODELS", "ShippedModel", "find_shipped_model", "resolve_model"]


@dataclass(frozen=True)
class ShippedModel:
    """One model file shipped with segtool.

    Attributes
    ----------
    name : str
        What users type (``-m NAME``).
    filename : str
        File name inside ``segtool/models/``.
    summary : str
        One line: what images it is for.
    """

    name: str
    filename: str
    summary: str


#: The models segtool knows by name, the default first.
SHIPPED_MODELS: tuple[ShippedModel, ...] = (
    ShippedModel("nuclei", "nuclei.pt", "fluorescence nuclei (bright on dark), grey input"),
    ShippedModel("nuclei-he", "nuclei_he.pt", "nuclei in H&E-like stained tissue and brightfield (dark on bright), hematoxylin input"),
)

DEFAULT_MODEL = SHIPPED_MODELS[0].name


def find_shipped_model(name: str = DEFAULT_MODEL) -> Path:
    """Path of the shipped model called ``name``.

    Parameters
    ----------
    name : str
        A name from :data:`SHIPPED_MODELS`.

    Returns
    -------
    path : Path
        The model file in the installed package.

    Raises
    ------
    ModelError
        If the name is unknown, or this installation lacks the file.

    Examples
    --------
    >>> find_shipped_model("nuclei").name
    'nuclei.pt'
    """
    from importlib import resources

    known = {model.name: model for model in SHIPPED_MODELS}
    if name not in known:
        raise ModelError(f"no shipped model named {name!r}; shipped: {', '.join(known)} (or give a model file)")
    try:
        candidate = resources.files("segtool").joinpath("models", known[name].filename)
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    what = "no pretrained model is" if name == DEFAULT_MODEL else f"the shipped model {name!r} is not"
    raise ModelError(f"{what} installed in this segtool; pass -m MODEL (train one with `segtool train`)")


def resolve_model(spec: str | Path | None) -> tuple[Path, str | None]:
    """Turn a ``-m`` value into a model file and, for a shipped model, its name.

    An existing file wins over a shipped name, so a file called ``nuclei``
    in the working folder is still usable.

    Parameters
    ----------
    spec : str, Path or None
        A model file, a shipped model's name, or None for the default.

    Returns
    -------
    path : Path
    name : str or None
        The shipped model's name, None for a file given by path.

    Raises
    ------
    ModelError
        If ``spec`` is neither an existing file nor a shipped name (the
        message lists the names), or a shipped file is missing.

    Examples
    --------
    >>> resolve_model("nuclei")[1]
    'nuclei'
    """
    if spec is None:
        return find_shipped_model(DEFAULT_MODEL), DEFAULT_MODEL
    path = Path(spec)
    names = {model.name for model in SHIPPED_MODELS}
    if path.exists() or str(spec) not in names:
        if not path.exists():
            raise ModelError(
                f"model file not found: {spec} (shipped models: {', '.join(sorted(names))})"
            )
        return path, None
    return find_shipped_model(str(spec)), str(spec)
