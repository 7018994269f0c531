"""Folders that ship with Flowhook: `schemas/` and `examples/`.

In a source checkout (and an editable install) they are the repository's folders; in a
wheel they are packed inside the package as `_schemas` and `_examples`.
"""

from __future__ import annotations

from pathlib import Path


def shipped_dir(name: str) -> Path:
    """The repository's `name/` folder, or the copy packed into the wheel as `_name/`."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / name, here / f"_{name}"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name} folder is missing from this installation")
