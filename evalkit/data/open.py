"""Open a dataset folder in whichever registered format it is in (evalkit/data/formats/)."""

from __future__ import annotations

from pathlib import Path

from evalkit.data.formats import formats_of
from evalkit.data.formats.hf import read_hf
from evalkit.data.sources import DataError, ImageSource


def classification_layouts() -> str:
    return ", or ".join(f.layout for f in formats_of("classification"))


def open_classification(root: Path | str, split: str = "val", wds_split: str = "test") -> ImageSource:
    """A classification split from `root`, format detected from the layout (the first registered format,
    by priority, that recognises it); `hf:NAME` is a Hugging Face hub dataset."""
    if isinstance(root, str) and root.startswith("hf:"):
        return read_hf(root, split)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist. Expected {classification_layouts()}.")
    for fmt in formats_of("classification"):
        if fmt.detect(root, split, wds_split):
            return fmt.read(root, split, wds_split)
    raise DataError(f"{root}: unrecognised layout. Expected {classification_layouts()}.")
