"""Image-tower throughput against the compute floor, on the engine's own path (cached uint8 pixels ->
pinned batches read ahead by background threads -> device -> normalise -> bf16 autocast encode).

Run it whenever a GPU machine is at hand: `python bench/bench_gpu.py --archs ViT-B-32,ViT-L-14 --n 50000`.
Floor = image-tower GFLOPs x images / 800 TFLOP/s (the issue's reference peak); target within 2x.
On CPU it runs as a smoke check (`--n 256 --archs tinyclip-S --device cpu --precision fp32`).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import write_section  # noqa: E402

PEAK_TFLOPS = 800.0


def image_gflops(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    x = torch.ones(1, 3, size, size, device=next(model.parameters()).device)
    with torch.enable_grad(), counter:
        model.encode_image(x)
    return sum(counter.get_flop_counts()["Global"].values()) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="ViT-B-32,ViT-L-14")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from evalkit.data.cache import host_batches
    from evalkit.data.preprocess import normalize
    from evalkit.engine import _autocast, default_precision
    from evalkit.models.factory import load_model

    device = torch.device(args.device)
    precision = args.precision or default_precision(device.type)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            lm = load_model(arch, device=device)
            size = lm.preprocess.size
            pixels = np.lib.format.open_memmap(Path(tmp) / f"{size}.npy", mode="w+", dtype=np.uint8, shape=(args.n, 3, size, size))
            pixels[:] = np.random.default_rng(0).integers(0, 255, size=(1, 3, size, size), dtype=np.uint8)
            gflops = image_gflops(lm.model, size)
            autocast = _autocast(device, precision)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                for start in range(0, min(args.n, 2 * args.batch_size), args.batch_size):  # warm-up
                    b = torch.from_numpy(np.array(pixels[start:start + args.batch_size])).to(device)
                    with autocast():
                        lm.encode_image(normalize(b, lm.preprocess))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                cuda = device.type == "cuda"
                for _, _, b in host_batches(pixels, args.batch_size, pin=cuda):  # as the engine reads
                    with autocast():
                        lm.encode_image(normalize(b.to(device, non_blocking=True), lm.preprocess))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            floor = gflops * args.n / (PEAK_TFLOPS * 1e3)
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            rows.append((arch, gflops, args.n / dt, dt, floor, dt / floor, mem, rss))
            del lm, pixels
    body = (f"{args.n} synthetic images at each model's resolution, from a memory-mapped uint8 cache, batch {args.batch_size}, "
            f"{precision} on {args.device}.\n\n| arch | image GFLOPs | images/s | s per pass | floor (s) | x floor | peak GPU GiB | peak RSS MiB (so far) |\n"
            "|---|---|---|---|---|---|---|---|\n"
            + "".join(f"| {a} | {g:.2f} | {ips:.0f} | {dt:.2f} | {fl:.3f} | {r:.1f} | {m:.1f} | {rs:.0f} |\n"
                    for a, g, ips, dt, fl, r, m, rs in rows))
    print(body)
    if not args.no_write:
        write_section("gpu", "Image tower throughput vs compute floor", body, "python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
