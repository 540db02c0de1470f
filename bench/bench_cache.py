"""Decode-once cache: a second pass over real-sized JPEGs against the first (decode + resize + cache).

Writes N synthetic 500x375 JPEGs (ImageNet val's typical size) in the ImageNet folder layout, then
times `decoded_images` cold (decoding with workers, writing the memory-mapped cache) and warm (reading
every cached pixel), side by side in one run.
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from evalkit.data.cache import decoded_images
    from evalkit.data.folder import read_image_folder
    from evalkit.data.preprocess import PreprocessCfg

    work = Path(tempfile.mkdtemp(prefix="evalkit-cache-bench-"))
    write_jpegs(work / "data", args.n)
    source = read_image_folder(work / "data", "val")
    cfg = PreprocessCfg(size=args.size)
    t0 = time.perf_counter()
    first = decoded_images(source, cfg, work / "cache")
    checksum1 = int(np.asarray(first).sum(dtype=np.uint64))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = decoded_images(source, cfg, work / "cache")
    checksum2 = int(np.asarray(second).sum(dtype=np.uint64))
    warm = time.perf_counter() - t0
    assert checksum1 == checksum2
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    body = (f"{args.n} JPEGs of 500x375 -> {args.size}px uint8 (open_clip eval transform), "
            f"{(work / 'cache').stat().st_size and sum(p.stat().st_size for p in (work / 'cache').rglob('*.npy')) / 2**20:.0f} MiB cache.\n\n"
            "| pass | wall (s) | images/s |\n|---|---|---|\n"
            f"| first (decode, resize, write cache) | {cold:.2f} | {args.n / cold:.0f} |\n"
            f"| second (memory-mapped cache) | {warm:.3f} | {args.n / warm:.0f} |\n\n"
            f"Second pass {cold / warm:.0f}x faster than the first (target: 20x). Peak RSS {rss:.0f} MiB.\n")
    print(body)
    if not args.no_write:
        write_section("cache", "Decode-once cache: second pass vs first", body, f"python bench/bench_cache.py --n {args.n}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
