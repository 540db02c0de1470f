"""Hugging Face `datasets`: a local `save_to_disk` folder or parquet files everywhere, a hub name where
a hub is reachable. Columns are found by name (`image`/`img`/`jpg`, `label`/`cls`, `caption(s)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.data.formats import Format, register_format
from evalkit.data.sources import DataError, ImageSource

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp")
LABEL_COLUMNS = ("label", "labels", "cls", "class")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "txt", "text")


def is_hf_folder(root: Path) -> bool:
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file() or any(root.glob("**/*.parquet"))


def _load(root: str, split: str) -> Any:
    import datasets

    path = Path(root)
    if root.startswith("hf:"):
        return datasets.load_dataset(root[3:], split=split)
    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))[split]
    if (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    files = sorted(str(p) for p in path.glob(f"**/{split}*.parquet")) or sorted(str(p) for p in path.glob(f"**/{split}/*.parquet"))
    if not files:
        raise DataError(f"{root}: no parquet files for split '{split}' (looked for {split}*.parquet and {split}/*.parquet).")
    return datasets.load_dataset("parquet", data_files={split: files}, split=split)


class ColumnOpener:
    """`i -> ds[i][column]`, picklable for decode workers (a `datasets.Dataset` pickles by reference
    to its memory-mapped files)."""

    def __init__(self, ds: Any, column: str) -> None:
        self.ds, self.column = ds, column

    def __call__(self, i: int):
        return self.ds[i][self.column]


def read_hf(root: str, split: str, kind: str = "classification") -> ImageSource:
    ds = _load(root, split)
    cols = set(ds.column_names)
    img_col = next((c for c in IMAGE_COLUMNS if c in cols), None)
    want = LABEL_COLUMNS if kind == "classification" else CAPTION_COLUMNS
    tgt_col = next((c for c in want if c in cols), None)
    if img_col is None or tgt_col is None:
        raise DataError(f"{root} [{split}]: columns {sorted(cols)}; need an image column {IMAGE_COLUMNS} and {want}.")
    targets = list(ds[tgt_col])
    if kind != "classification":
        targets = [[t] if isinstance(t, str) else list(t) for t in targets]
    classnames = None
    feat = ds.features.get(tgt_col)
    if getattr(feat, "names", None):
        classnames = [n.replace("_", " ") for n in feat.names]
    fp = getattr(ds, "_fingerprint", None) or f"{root}:{split}:{len(ds)}"

    return ImageSource(
        name=f"{root}[{split}]",
        ids=[f"{root}[{split}]#{i}" for i in range(len(ds))],
        opener=ColumnOpener(ds, img_col),
        targets=targets,
        fingerprint=str(fp)[:16],
        classnames=classnames,
        meta={"format": "hf"},
    )


register_format(Format("hf", "classification", lambda root, split, wds_split: is_hf_folder(root),
                       lambda root, split, wds_split: read_hf(str(root), split),
                       "a Hugging Face datasets folder (save_to_disk, or parquet files)", priority=20))
