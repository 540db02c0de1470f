"""Open a dataset folder in whichever supported format it is in."""

from __future__ import annotations

from pathlib import Path

from evalkit.data.formats.folder import is_image_folder, read_image_folder
from evalkit.data.formats.hf import is_hf_folder, read_hf
from evalkit.data.formats.wds import dataset_type, is_wds, read_wds
from evalkit.data.sources import DataError, ImageSource

CLASSIFICATION_LAYOUTS = (
    "the ImageNet val layout (<root>/val/<wnid>/*.JPEG), a clip_benchmark webdataset folder "
    "(<root>/test/nshards.txt, <root>/test/0.tar, classnames.txt), or a Hugging Face datasets folder "
    "(save_to_disk, or parquet files)"
)


def open_classification(root: Path | str, split: str = "val", wds_split: str = "test") -> ImageSource:
    """A classification split from `root`, format detected from the layout."""
    if isinstance(root, str) and root.startswith("hf:"):
        return read_hf(root, split)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist. Expected {CLASSIFICATION_LAYOUTS}.")
    if is_wds(root, wds_split):
        kind = dataset_type(root)
        if kind != "classification":
            raise DataError(f"{root / 'dataset_type.txt'}: says '{kind}', but this task needs a classification folder "
                            f"(<key>.cls class ids, classnames.txt). Expected {CLASSIFICATION_LAYOUTS}.")
        return read_wds(root, wds_split)
    if is_hf_folder(root):
        return read_hf(str(root), split)
    if is_image_folder(root, split):
        return read_image_folder(root, split)
    raise DataError(f"{root}: unrecognised layout. Expected {CLASSIFICATION_LAYOUTS}.")
