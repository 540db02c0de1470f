"""What every reader yields: a list of images loadable by index, with targets in the task's terms.

Readers never decode eagerly: an `ImageSource` knows how to open image `i`, so the decode-once
cache (cache.py) decides when decoding happens, and a corrupt file is named when it is reached.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from evalkit.errors import UserError


class DataError(UserError, RuntimeError):
    """Bad or missing data: the message names the file or folder and what was expected."""


@dataclass
class ImageSource:
    """Images of one dataset split.

    `targets` is a class index per image (classification), a list of captions per image
    (retrieval), or an annotation path per image (segmentation). `fingerprint` identifies the
    exact files, so a cache built from them is never reused for other files.
    """

    name: str
    ids: list[str]
    opener: Callable[[int], Image.Image]
    targets: Sequence[Any]
    fingerprint: str
    classnames: list[str] | None = None
    templates: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def open(self, i: int) -> Image.Image:
        """Image `i`, fully decoded; a corrupt file raises `DataError` naming it."""
        try:
            img = self.opener(i)
            img.load()
            return img
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.ids[i]}: cannot decode image ({type(e).__name__}: {e}). Replace or remove the file.") from None


def open_path(path: str | Path) -> Image.Image:
    return Image.open(path)


def open_bytes(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def fingerprint_files(paths: Sequence[str | Path], extra: str = "") -> str:
    """A cheap identity of a file list: names, sizes and modification times.

    Names are taken relative to the files' common folder, so the same data staged under another
    mount point (a node-local copy on a cluster) keeps its identity, while an edited, added or
    removed file changes it.
    """
    h = hashlib.sha1(extra.encode())
    strs = [os.fspath(p) for p in paths]
    try:
        base = os.path.commonpath([os.path.dirname(p) for p in strs]) if strs else ""
    except ValueError:  # absolute and relative names mixed: keep them as given
        base = ""
    for p in strs:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, base) if base else p}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]
