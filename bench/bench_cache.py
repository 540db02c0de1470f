"""Decode-once cache: a second pass over real-sized JPEGs against the first (decode + resize + cache).

Writes N synthetic 500x375 JPEGs (ImageNet val's typical size) in the ImageNet folder layout, then
times `decoded_images` in one run:

- first pass: decoding with workers, writing the memory-mapped cache (the JPEGs are dropped from the
  page cache first, so they are read from disk as on a fresh machine);
- second pass, warm page cache: reading every cached pixel right after the cache was written, so the
  file is still in the page cache (RAM): what a second task on the same images sees;
- second pass, cold page cache: the cache file is fsynced and dropped from the page cache
  (`posix_fadvise(POSIX_FADV_DONTNEED)`, checked with `mincore`), then read again: what a later run
  or another node reading the cache from disk sees. On a VM the host may still cache the virtual disk.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import write_section  # noqa: E402


def write_jpegs(root: Path, n: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        d = root / "val" / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        base = (np.sin(xx / (7 + i % 13)) + np.cos(yy / (5 + i % 11))) * 60 + 128
        img = np.stack([base + rng.normal(0, 20, base.shape) for _ in range(3)], -1).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"ILSVRC2012_val_{i:08d}.JPEG", quality=90)


def resident_fraction(paths: list[Path]) -> float:
    """Fraction of the files' pages in the page cache (Linux `mincore` on a shared read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        if not size:
            continue
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            try:
                vec = (ctypes.c_ubyte * pages)()
                if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
                resident += sum(b & 1 for b in vec)
                total += pages
            finally:
                libc.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    return resident / total if total else 0.0


def drop_page_cache(paths: list[Path]) -> None:
    """Write back and evict the files' pages (pages still mapped by this process would stay)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from evalkit.data.cache import decoded_images
    from evalkit.data.formats.folder import read_image_folder
    from evalkit.data.preprocess import PreprocessCfg

    work = Path(tempfile.mkdtemp(prefix="evalkit-cache-bench-"))
    write_jpegs(work / "data", args.n)
    jpegs = sorted((work / "data").rglob("*.JPEG"))
    drop_page_cache(jpegs)
    jpeg_resident = resident_fraction(jpegs)
    source = read_image_folder(work / "data", "val")
    cfg = PreprocessCfg(size=args.size)

    def one_pass() -> tuple[float, int]:
        t0 = time.perf_counter()
        arr = decoded_images(source, cfg, work / "cache")
        checksum = int(np.asarray(arr).sum(dtype=np.uint64))  # touches every cached pixel
        dt = time.perf_counter() - t0
        del arr
        gc.collect()  # unmap: pages this process maps cannot be evicted
        return dt, checksum

    first, checksum1 = one_pass()
    cached = sorted(p for p in (work / "cache").rglob("*") if p.is_file())
    resident_warm = resident_fraction(cached)
    warm, checksum2 = one_pass()
    drop_page_cache(cached)
    resident_cold = resident_fraction(cached)
    cold, checksum3 = one_pass()
    assert checksum1 == checksum2 == checksum3
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mib = sum(p.stat().st_size for p in cached if p.suffix == ".npy") / 2**20
    body = (f"{args.n} JPEGs of 500x375 -> {args.size}px uint8 (open_clip eval transform), {mib:.0f} MiB cache. "
            "Each pass is `decoded_images` plus a sum over every pixel it returns. Page-cache residency measured "
            "with `mincore` just before each pass.\n\n"
            "| pass | page cache before the pass | wall (s) | images/s | vs first |\n|---|---|---|---|---|\n"
            f"| first (decode, resize, write cache) | JPEGs {jpeg_resident:.0%} resident (dropped) | {first:.2f} | "
            f"{args.n / first:.0f} | 1x |\n"
            f"| second, warm: the cache file just written, read from RAM | cache {resident_warm:.0%} resident | "
            f"{warm:.3f} | {args.n / warm:.0f} | {first / warm:.0f}x |\n"
            f"| second, cold: the cache file dropped (fsync + POSIX_FADV_DONTNEED), read from disk | cache "
            f"{resident_cold:.0%} resident | {cold:.3f} | {args.n / cold:.0f} | {first / cold:.0f}x |\n\n"
            f"Second pass {first / warm:.0f}x (warm page cache) and {first / cold:.0f}x (cold, from disk) faster than the "
            f"first; target 20x: {'met' if first / cold >= 20 else 'NOT met'} from disk, "
            f"{'met' if first / warm >= 20 else 'NOT met'} from RAM. Peak RSS {rss:.0f} MiB.\n")
    print(body)
    if not args.no_write:
        write_section("cache", "Decode-once cache: second pass vs first", body, f"python bench/bench_cache.py --n {args.n}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
