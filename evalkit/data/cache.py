"""The decode-once cache: preprocessed uint8 pixels per (dataset files, pixel preprocessing).

Decoding JPEGs is the wall on a GPU, so every image is decoded and resized once and kept as a
memory-mapped uint8 array that every checkpoint and every later run reuses. One cache serves all
architectures with the same size/interpolation/resize mode (mean and std are applied on device).
Entries are written to a temp file and renamed, so a killed build leaves no half cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from evalkit.atomic import atomic_write, atomic_write_text
from evalkit.data.preprocess import PreprocessCfg, pixel_transform
from evalkit.data.sources import DataError, ImageSource


def default_cache_dir() -> Path:
    return Path(os.environ.get("EVALKIT_CACHE", Path.home() / ".cache" / "evalkit" / "images"))


class _Decode(Dataset):
    def __init__(self, source: ImageSource, cfg: PreprocessCfg) -> None:
        self.source, self.cfg, self.tf = source, cfg, None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        if self.tf is None:
            self.tf = pixel_transform(self.cfg)
        try:
            return i, self.tf(self.source.open(i)), ""
        except DataError as e:
            return i, torch.zeros(3, self.cfg.size, self.cfg.size, dtype=torch.uint8), str(e)


def _collate(batch):
    idx, imgs, errs = zip(*batch)
    return list(idx), torch.stack(imgs), list(errs)


def entry_dir(source: ImageSource, cfg: PreprocessCfg, cache_dir: Path) -> Path:
    h = hashlib.sha1(f"{source.fingerprint}|{len(source)}|{cfg.pixel_key}".encode()).hexdigest()[:20]
    return cache_dir / f"{h}-{cfg.pixel_key}"


def decode_all(source: ImageSource, cfg: PreprocessCfg, out: np.ndarray, num_workers: int, progress: bool) -> None:
    """Fill `out` [N, 3, S, S] uint8 with the preprocessed images of `source`."""
    loader = DataLoader(
        _Decode(source, cfg), batch_size=64, num_workers=num_workers, collate_fn=_collate,
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(source), desc=f"decode {Path(source.name).name}", unit="img", file=sys.stderr)
    for idx, imgs, errs in loader:
        bad = [e for e in errs if e]
        if bad:
            raise DataError(bad[0])
        out[idx[0] : idx[-1] + 1] = imgs.numpy()
        if bar:
            bar.update(len(idx))
    if bar:
        bar.close()


def decoded_images(
    source: ImageSource,
    cfg: PreprocessCfg,
    cache_dir: Path | None = None,
    num_workers: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """uint8 [N, 3, S, S] pixels of `source`: read from the cache, or decoded (and cached) now.

    With `cache_dir=None` the pixels are decoded into memory and not kept.
    """
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    shape = (len(source), 3, cfg.size, cfg.size)
    if cache_dir is None:
        arr = np.empty(shape, dtype=np.uint8)
        decode_all(source, cfg, arr, num_workers, progress)
        return arr
    entry = entry_dir(source, cfg, Path(cache_dir))
    final = entry / "pixels.npy"
    if final.is_file():
        arr = np.load(final, mmap_mode="r")
        if arr.shape == shape:
            return arr
    def fill(tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode_all(source, cfg, arr, num_workers, progress)
        arr.flush()
        del arr

    t0 = time.time()
    atomic_write(final, fill)
    meta = {"source": source.name, "n": len(source), "pixel_key": cfg.pixel_key, "fingerprint": source.fingerprint,
            "build_s": round(time.time() - t0, 3), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(entry / "meta.json", json.dumps(meta, indent=1))
    return np.load(final, mmap_mode="r")


def host_batches(pixels: np.ndarray, batch_size: int, pin: bool = False, workers: int | None = None,
                 depth: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, uint8 batch) over `pixels` in order, read ahead by background threads.

    Copying out of the memory-mapped cache (straight into pinned memory when `pin`) releases the
    GIL, so the next batches are read while the device computes this one; with `pin`, the caller's
    `.to(device, non_blocking=True)` is a true async copy. By default a GPU (`pin`) gets up to 4
    readers, since it eats batches faster than one memcpy thread; a CPU run gets one.
    """
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if pin else 1
    if depth is None:
        depth = workers + 2
    def read(start: int) -> tuple[int, int, torch.Tensor]:
        stop = min(start + batch_size, len(pixels))
        if pin:
            out = torch.empty((stop - start, *pixels.shape[1:]), dtype=torch.uint8, pin_memory=True)
            out.numpy()[:] = pixels[start:stop]
        else:
            out = torch.from_numpy(np.array(pixels[start:stop]))
        return start, stop, out

    starts = list(range(0, len(pixels), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="evalkit-pixels") as pool:
        ahead = deque(pool.submit(read, s) for s in starts[:depth])
        for i in range(len(starts)):
            item = ahead.popleft().result()
            if i + depth < len(starts):
                ahead.append(pool.submit(read, starts[i + depth]))
            yield item


def list_entries(cache_dir: Path | None = None) -> list[dict]:
    cache_dir = Path(cache_dir or default_cache_dir())
    out = []
    for meta in sorted(cache_dir.glob("*/meta.json")):
        info = json.loads(meta.read_text())
        size = sum(p.stat().st_size for p in meta.parent.glob("*") if p.is_file())
        out.append({"entry": meta.parent.name, "bytes": size, **info})
    return out


def remove_entries(cache_dir: Path | None = None, match: str = "") -> int:
    cache_dir = Path(cache_dir or default_cache_dir())
    n = 0
    for e in list_entries(cache_dir):
        if match in e["entry"] or match in e.get("source", ""):
            shutil.rmtree(cache_dir / e["entry"], ignore_errors=True)
            n += 1
    return n
