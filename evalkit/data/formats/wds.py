"""clip_benchmark's webdataset layout, read in place.

`<root>/<split>/nshards.txt`, `<root>/<split>/{0..n-1}.tar` holding `<key>.{webp,png,jpg,jpeg}`
plus `<key>.cls` (classification) or `<key>.txt` (captions, one per line); `classnames.txt`,
`zeroshot_classification_templates.txt` and `dataset_type.txt` at the root. Tar members are indexed
by offset and read directly: nothing is ever extracted, so member names cannot reach the filesystem.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from evalkit.data.formats import Format, register_format
from evalkit.data.sources import DataError, ImageSource, fingerprint_files, open_bytes

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")


def is_wds(root: Path, split: str) -> bool:
    return (root / split / "nshards.txt").is_file()


def dataset_type(root: Path) -> str:
    f = root / "dataset_type.txt"
    return f.read_text().strip().lower() if f.is_file() else "classification"


def _read_lines(path: Path) -> list[str] | None:
    return [line.strip() for line in path.read_text().splitlines()] if path.is_file() else None


def _index_shard(tar_path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> {extension: (offset, size)} for one shard, in file order."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(tar_path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)  # webdataset: the key ends at the basename's first dot
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{tar_path}: unreadable tar shard ({e}). Re-export or re-download this shard.") from None
    return samples


def _read(tar_path: Path, span: tuple[int, int]) -> bytes:
    with open(tar_path, "rb") as f:
        f.seek(span[0])
        return f.read(span[1])


class SpanOpener:
    """`i -> the image at spans[i]` ((tar shard, (offset, size))), picklable for decode workers."""

    def __init__(self, spans: list) -> None:
        self.spans = spans

    def __call__(self, i: int):
        return open_bytes(_read(*self.spans[i]))


def _incomplete(root: Path, shard: Path, key: str, parts: dict, kind: str, label_ext: str, no_image: bool) -> str:
    """What a sample lacks, what it has, and the layout its folder's dataset_type.txt promises."""
    has = ", ".join(f"{key}.{e}" for e in parts)
    if no_image:
        what = f"no image ({', '.join(f'.{e}' for e in IMAGE_KEYS)})"
    elif kind == "retrieval":
        what = "no .txt captions"
    else:
        what = "no .cls class id"
    promise = (f"{root / 'dataset_type.txt'} says '{kind}'" if (root / "dataset_type.txt").is_file()
               else f"{root} has no dataset_type.txt, so it is read as '{kind}'")
    layout = ("<key>.txt (captions, one per line)" if kind == "retrieval" else "<key>.cls (the class index)")
    other = {"retrieval": "cls", "classification": "txt"}.get(kind)
    mixup = (f" The sample has a .{other} instead: is this a "
             f"{'classification' if other == 'cls' else 'retrieval'} folder?") if other in parts and not no_image else ""
    return (f"{shard}: sample '{key}' has {what} (it has {has}). {promise}: every sample needs an image and "
            f"{layout}, in clip_benchmark's webdataset layout.{mixup}")


def read_wds(root: Path, split: str = "test") -> ImageSource:
    """All samples of a wds split. Targets: class ids, or caption lists for retrieval folders."""
    nfile = root / split / "nshards.txt"
    try:
        nshards = int(nfile.read_text().strip())
    except (OSError, ValueError) as e:
        raise DataError(f"{nfile}: missing or not an integer ({e}). Expected the clip_benchmark wds layout.") from None
    shards = [root / split / f"{i}.tar" for i in range(nshards)]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise DataError(f"{nfile} says {nshards} shards but these are missing: {', '.join(missing[:5])}.")
    kind = dataset_type(root)
    label_ext = "txt" if kind == "retrieval" else "cls"
    ids: list[str] = []
    spans: list[tuple[Path, tuple[int, int]]] = []
    targets: list = []
    for shard in shards:
        for key, parts in _index_shard(shard).items():
            img_ext = next((e for e in IMAGE_KEYS if e in parts), None)
            if img_ext is None or label_ext not in parts:
                raise DataError(_incomplete(root, shard, key, parts, kind, label_ext, img_ext is None))
            label = _read(shard, parts[label_ext]).decode("utf-8")
            if kind == "retrieval":
                targets.append(label.splitlines())
            else:
                try:
                    targets.append(int(label.strip()))
                except ValueError:
                    raise DataError(f"{shard}: '{key}.cls' is not an integer class id: {label[:40]!r}.") from None
            ids.append(f"{shard}::{key}.{img_ext}")
            spans.append((shard, parts[img_ext]))
    if not ids:
        raise DataError(f"{root / split}: the shards hold no samples.")
    return ImageSource(
        name=str(root),
        ids=ids,
        opener=SpanOpener(spans),
        targets=targets,
        fingerprint=fingerprint_files(shards, extra=f"wds:{split}"),
        classnames=_read_lines(root / "classnames.txt") if kind != "retrieval" else None,
        templates=_read_lines(root / "zeroshot_classification_templates.txt") if kind != "retrieval" else None,
        meta={"format": "wds", "dataset_type": kind},
    )


def _read_classification(root: Path, split: str, wds_split: str) -> ImageSource:
    kind = dataset_type(root)
    if kind != "classification":
        from evalkit.data.open import classification_layouts

        raise DataError(f"{root / 'dataset_type.txt'}: says '{kind}', but this task needs a classification folder "
                        f"(<key>.cls class ids, classnames.txt). Expected {classification_layouts()}.")
    return read_wds(root, wds_split)


register_format(Format("wds", "classification", lambda root, split, wds_split: is_wds(root, wds_split),
                       _read_classification, "a clip_benchmark webdataset folder (<root>/test/nshards.txt, "
                       "<root>/test/0.tar, classnames.txt)", priority=30))
