"""Open a dataset folder in whichever registered format it is in (evalkit/data/formats/): the formats of
the task's kind (classification, retrieval, segmentation) are asked in priority order, and the first
that recognises the folder reads it. The per-kind entry points (`open_classification` here,
`open_retrieval` in formats/captions.py, `open_segmentation` in formats/segmentation.py) add only
what is not a layout: `hf:NAME` hub datasets, an explicit annotation file, and their error messages,
which list every registered layout of the kind."""

from __future__ import annotations

from pathlib import Path

from evalkit.data.formats import formats_of
from evalkit.data.formats.hf import read_hf
from evalkit.data.sources import DataError, ImageSource


def layouts(kind: str) -> str:
    """Every registered layout of `kind`, in the order they are tried, for error messages."""
    return ", or ".join(f.layout for f in formats_of(kind))


def classification_layouts() -> str:
    return layouts("classification")


def read_detected(kind: str, root: Path, split: str, wds_split: str = "test") -> ImageSource | None:
    """The split read by the first registered format of `kind` (by priority) that recognises `root`;
    None when none does."""
    for fmt in formats_of(kind):
        if fmt.detect(root, split, wds_split):
            return fmt.read(root, split, wds_split)
    return None


def open_classification(root: Path | str, split: str = "val", wds_split: str = "test") -> ImageSource:
    """A classification split from `root`, format detected from the layout (the first registered format,
    by priority, that recognises it); `hf:NAME` is a Hugging Face hub dataset."""
    if isinstance(root, str) and root.startswith("hf:"):
        return read_hf(root, split)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist. Expected {classification_layouts()}.")
    source = read_detected("classification", root, split, wds_split)
    if source is None:
        raise DataError(f"{root}: unrecognised layout. Expected {classification_layouts()}.")
    return source
