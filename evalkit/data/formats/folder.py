"""torchvision ImageFolder / ImageNet val layout: `<root>/<split>/<class dir>/*.JPEG`, classes sorted."""

from __future__ import annotations

from pathlib import Path

from evalkit.data.formats import Format, register_format
from evalkit.data.sources import DataError, ImageSource, fingerprint_files, open_path

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class PathOpener:
    """`i -> open_path(paths[i])`, picklable (a lambda is not): decode workers started by forkserver
    or spawn receive the source pickled."""

    def __init__(self, paths: list) -> None:
        self.paths = [str(p) for p in paths]  # strs pickle ~50x faster than Paths (50k for ImageNet)

    def __call__(self, i: int):
        return open_path(self.paths[i])


def is_image_folder(root: Path, split: str) -> bool:
    base = root / split if (root / split).is_dir() else root
    return base.is_dir() and any(p.is_dir() for p in base.iterdir()) and not (root / split / "nshards.txt").exists()


def read_image_folder(root: Path, split: str = "val") -> ImageSource:
    """Every image under `<root>/<split>/<class>/`, targets = index of the class dir in sorted order."""
    base = root / split if (root / split).is_dir() else root
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{base}: no class folders. Expected the ImageNet val layout {root}/{split}/<wnid>/*.JPEG.")
    paths: list[Path] = []
    targets: list[int] = []
    for idx, d in enumerate(class_dirs):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        paths += files
        targets += [idx] * len(files)
    if not paths:
        raise DataError(f"{base}: class folders hold no images ({', '.join(sorted(IMAGE_EXTS))}).")
    classnames = None
    for cand in (root / "classnames.txt", base / "classnames.txt"):
        if cand.is_file():
            classnames = [line.strip() for line in cand.read_text().splitlines() if line.strip()]
            if len(classnames) != len(class_dirs):
                raise DataError(f"{cand}: {len(classnames)} names for {len(class_dirs)} class folders in {base}.")
            break
    return ImageSource(
        name=str(base),
        ids=[str(p) for p in paths],
        opener=PathOpener(paths),
        targets=targets,
        fingerprint=fingerprint_files(paths, extra="folder"),
        classnames=classnames,
        meta={"format": "image_folder", "wnids": [d.name for d in class_dirs]},
    )




register_format(Format("image-folder", "classification", lambda root, split, wds_split: is_image_folder(root, split),
                       lambda root, split, wds_split: read_image_folder(root, split),
                       "the ImageNet val layout (<root>/val/<wnid>/*.JPEG)", priority=10))
