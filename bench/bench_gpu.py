"""Image-side throughput of the engine's own path against the compute floor, per device.

What is timed is `evalkit.engine.loop.run_dataset` itself, with a real zero-shot classification runner
(ImageNet-1k's 1000 classes) and its `result()`: the decode-cache memmap is opened by `decoded_images`,
read by `host_batches` (background threads copying into pinned memory), moved to the device, `normalize`d,
encoded under the engine's autocast, and the runner's `update` (logits into a device buffer) and `result`
(metrics on the host) run as in a real unit. The pixels are synthetic uint8 images written beforehand in
the cache's own layout (`<cache>/<entry>/pixels.npy`, `meta.json`), so no JPEG is decoded: this is the
steady state of a grid, where every checkpoint reads the same already-decoded cache (warm page cache).

Per architecture: the engine's default batch size (`RunOptions().batch_size`) and a `--batch-sizes` sweep;
each config is warmed up through the same reader first (twice: cuBLAS/kernels, and PyTorch's caching host
allocator, which then serves the pinned batch buffers that `host_batches` allocates per batch - those
allocations are part of the engine's path and stay inside the timed region, as in the engine). The
zero-shot classifier (text tower over 1000 classes x templates) is built once per architecture, timed on
its own, as the engine builds it once per checkpoint and task.

Reported per (arch, batch): images/s, seconds per 50,000-image ImageNet pass, image-tower GFLOPs per image
(torch's FLOP counter on `encode_image` at batch 1, as evalkit's flops.py counts; the results table's
`gflops_per_sample` is image + text, listed per arch), achieved TFLOP/s, ratio to the compute floor (both
the issue's 800 TFLOP/s reference and the GPU's own bf16 dense peak from its name), peak GPU memory and
peak host RSS (total and anonymous; the file-backed part is the memory-mapped cache).

Models are built with random weights (nothing to download; throughput does not depend on the values). The
synthetic pixels (N x 3 x S x S bytes: 7.5 GB for 50,000 images at 224 px) go to a private subfolder of
`--cache-dir` (default: evalkit's decode cache folder, $EVALKIT_CACHE or ~/.cache/evalkit/images), removed
at the end. `--budget-s` (default 450 s, whole run, imports included) keeps the default 3-arch sweep under
8 minutes on one GPU: a config that would not fit its share is timed on n/2, n/4, ... images and its
ImageNet-pass time extrapolated, and the table says so. The classifier uses imagenet1k's 80 templates on
CUDA and 1 on CPU (`--templates`), so the CPU smoke takes seconds.

    python bench/bench_gpu.py --archs ViT-B-32,ViT-L-14,mammut_ViT-B-32           # < 8 min on one GPU
    python bench/bench_gpu.py --device cuda:1 --record                             # + bench/RESULTS.md
    python bench/bench_gpu.py --device cpu --archs tinyclip-S --n 256 --batch-sizes 64   # CPU smoke
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_T0 = time.perf_counter()  # the budget and "whole run" count from here, imports included

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import write_section  # noqa: E402

IMAGENET_PASS = 50_000
REFERENCE_PEAK = 800.0  # TFLOP/s bf16 dense, the reference for H100-class GPUs
# bf16 (= fp16) dense tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name; first match wins
GPU_PEAKS = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),  # H100 = SXM
    ("H800 PCIe", 756.0), ("H800", 989.0), ("B200", 2250.0), ("B100", 1750.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 6000 Ada", 364.0), ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]


def gpu_peak(name: str) -> tuple[float, str]:
    """(bf16 dense peak TFLOP/s, where it came from) for a CUDA device name."""
    for key, peak in GPU_PEAKS:
        if key.lower() in name.lower():
            return peak, f"{'H100 SXM' if key == 'H100' else key} bf16 dense peak, from the name '{name}'"
    return REFERENCE_PEAK, f"'{name}' not in the peak table: the {REFERENCE_PEAK:.0f} TFLOP/s reference is used"


class RssSampler:
    """Peak host RSS (total, anonymous) over a region, sampled from /proc/self/status (Linux);
    elsewhere the process's lifetime peak (ru_maxrss)."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak, self.peak_anon = every_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.linux = Path("/proc/self/status").is_file()

    def _sample(self) -> None:
        if not self.linux:
            return
        vals = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "RssAnon:")):
                k, v = line.split(":", 1)
                vals[k] = int(v.split()[0]) * 1024
        self.peak = max(self.peak, vals.get("VmRSS", 0))
        self.peak_anon = max(self.peak_anon, vals.get("RssAnon", 0))

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if not self.linux:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.peak_anon = 0


class SyntheticCache:
    """Synthetic decoded pixels in the decode cache's own layout, under a private folder of `root`
    that is removed on close. One entry per (resolution, image count), written once."""

    def __init__(self, root: Path, keep: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="bench_gpu-", dir=root))
        self.keep = keep
        self.sources: dict[tuple[str, int], object] = {}
        self.write_s = 0.0

    def source(self, cfg, n: int, n_classes: int):
        """An ImageSource of `n` images whose decoded pixels are already in the cache (never decoded)."""
        from evalkit.data.cache import entry_dir
        from evalkit.data.sources import ImageSource

        key = (cfg.pixel_key, n)
        if key in self.sources:
            return self.sources[key]

        def never(i: int):
            raise RuntimeError("bench_gpu: synthetic pixels missing from the cache; the engine tried to decode")

        src = ImageSource(name=f"bench_gpu-synthetic-{cfg.size}px-{n}", ids=[str(i) for i in range(n)], opener=never,
                          targets=[i % n_classes for i in range(n)], fingerprint=f"bench_gpu-synthetic-{n}-{cfg.pixel_key}",
                          meta={"format": "synthetic"})
        entry = entry_dir(src, cfg, self.dir)
        entry.mkdir(parents=True, exist_ok=True)
        need = n * 3 * cfg.size * cfg.size
        free = shutil.disk_usage(self.dir).free
        if need > free - 2**30:
            raise SystemExit(f"bench_gpu: {need / 2**30:.1f} GiB of synthetic pixels needed under {self.dir}, "
                             f"{free / 2**30:.1f} GiB free; pass --cache-dir on a larger disk or a smaller --n")
        t0 = time.perf_counter()
        block = np.random.default_rng(0).integers(0, 256, size=(min(n, 64), 3, cfg.size, cfg.size), dtype=np.uint8)
        tmp = entry / ".pixels.npy.tmp"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, cfg.size, cfg.size))
        for start in range(0, n, len(block)):
            stop = min(start + len(block), n)
            arr[start:stop] = block[: stop - start]
        arr.flush()
        del arr
        os.replace(tmp, entry / "pixels.npy")
        (entry / "meta.json").write_text(json.dumps({"source": src.name, "n": n, "pixel_key": cfg.pixel_key,
                                                     "fingerprint": src.fingerprint, "synthetic": True}))
        self.write_s += time.perf_counter() - t0
        self.sources[key] = src
        return src

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def image_gflops(lm, device: torch.device) -> float:
    """GFLOPs of one image through the image tower (`encode_image`), counted as evalkit's flops.py counts
    (torch's FlopCounterMode, batch 1, fp32, grad enabled so attention's fused fast path is counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.ones(1, 3, lm.preprocess.size, lm.preprocess.size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        lm.encode_image(x)
    return sum(counter.get_flop_counts()["Global"].values()) / 1e9


def table_gflops(lm) -> float | None:
    """The results table's `gflops_per_sample` (image + text forward), without touching the FLOPs disk cache."""
    from evalkit.models.flops import count_gflops

    try:
        return count_gflops(lm.model, lm.preprocess.size, lm.context_length, lm.family)
    except Exception:
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    device: str
    arch: str
    batch: int
    n: int
    seconds: float
    result_s: float
    gflops: float
    peak_gpu: float | None
    rss: int
    rss_anon: int
    default: bool = False

    @property
    def ips(self) -> float:
        return self.n / self.seconds


@dataclass
class ArchInfo:
    device: str
    arch: str
    family: str
    size: int
    load_s: float
    classifier_s: float
    prompts: int
    gflops: float
    table: float | None
    notes: list[str] = field(default_factory=list)


def fresh_runner(prepared, source, device: torch.device):
    """A runner for `source` sharing `prepared`'s classifier (built once per checkpoint, as in the engine),
    with its own logits buffer, allocated the way `ZeroShotClassification.prepare` allocates it."""
    r = copy.copy(prepared)
    r.source = source
    r.logits = torch.empty(len(source), prepared.classifier.shape[1], dtype=torch.float32, device=device)
    return r


def ladder(n: int, floor: int) -> list[int]:
    """Image counts tried when the budget is short: n, n/2, n/4, ... down to `floor` (shared files)."""
    out = [n]
    while out[-1] // 2 >= floor:
        out.append(out[-1] // 2)
    return out


def bench_device(args, device: torch.device, batch_sizes: list[int], default_bs: int, cache: SyntheticCache,
                 deadline: float, n_configs_after: int) -> tuple[list[Row], list[ArchInfo]]:
    from evalkit.engine.device import autocast_for, default_precision
    from evalkit.engine.loop import RunOptions, run_dataset
    from evalkit.models.factory import load_model
    from evalkit.tasks.base import RunContext
    from evalkit.tasks.loader import get_task
    from evalkit.tasks.protocols.zeroshot_classification import ZeroShotClassification

    precision = args.precision or default_precision(device.type)
    base_opts = RunOptions()
    ctx = RunContext(device=device, autocast=autocast_for(device, precision), text_batch_size=base_opts.text_batch_size,
                     cache_dir=cache.dir, num_workers=base_opts.num_workers)
    task = get_task("imagenet1k").resolved(None, None, {"synthetic": True})
    templates = list(task.templates)[: args.templates] if args.templates else list(task.templates)
    task = dataclasses.replace(task, templates=templates)
    n_classes = len(task.classnames)
    archs = [a for a in args.archs.split(",") if a]
    rows: list[Row] = []
    infos: list[ArchInfo] = []
    configs_left = len(archs) * len(batch_sizes) + n_configs_after
    for ai, arch in enumerate(archs):
        t0 = time.perf_counter()
        lm = load_model(arch, device=device)
        sync(device)
        load_s = time.perf_counter() - t0
        gflops = image_gflops(lm, device)
        info = ArchInfo(str(device), arch, lm.family, lm.preprocess.size, load_s, 0.0, n_classes * len(templates),
                        gflops, table_gflops(lm))
        warm_n = min(args.n, max(4 * max(batch_sizes), 1024))
        warm = cache.source(lm.preprocess, warm_n, n_classes)
        prepared = ZeroShotClassification(task, warm)
        t0 = time.perf_counter()
        prepared.prepare(lm, ctx)  # the classifier: text tower over every prompt, once per checkpoint
        sync(device)
        info.classifier_s = time.perf_counter() - t0
        prepared.logits = None  # each config gets its own buffer; this one would only inflate peak memory
        infos.append(info)

        for bs in batch_sizes:
            opts = RunOptions(device=str(device), precision=precision, batch_size=bs, cache_dir=cache.dir,
                              progress=False)
            # warm-up through the same reader and runner: kernels, cuBLAS handles, the pinned host buffers
            for _ in range(2):
                t0 = time.perf_counter()
                r = fresh_runner(prepared, warm, device)
                run_dataset(lm, warm, [r], ctx, opts)
                r.result()
                sync(device)
                warm_s = time.perf_counter() - t0
            # how many images fit the budget: this config's share of the time left
            reserve = 20.0 * (len(archs) - ai - 1)  # loading and classifiers of the architectures still to come
            share = (deadline - time.perf_counter() - reserve) / configs_left
            fits = warm_n / warm_s * share
            counts = ladder(args.n, min(args.n, 8 * bs))
            n = next((k for k in counts if k <= fits), counts[-1])
            source = cache.source(lm.preprocess, n, n_classes)
            r = fresh_runner(prepared, source, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            with RssSampler() as rss:
                t0 = time.perf_counter()
                run_dataset(lm, source, [r], ctx, opts)
                sync(device)  # result() would wait here anyway (logits.cpu()); syncing first splits the time
                t1 = time.perf_counter()
                r.result()
                sync(device)
                dt = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            rows.append(Row(str(device), arch, bs, n, dt, dt - (t1 - t0), gflops, peak, rss.peak, rss.peak_anon,
                            default=bs == default_bs))
            configs_left -= 1
            print(f"# {device} {arch} batch {bs}: {n} images in {dt:.2f} s ({n / dt:.0f} images/s)",
                  file=sys.stderr, flush=True)
            del r
        del lm, prepared
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, infos


def device_label(device: torch.device) -> tuple[str, float | None, str]:
    """(name, bf16 dense peak or None, where the peak came from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak, why = gpu_peak(name)
        return name, peak, why
    from _results_md import machine

    return machine(), None, "no peak for a CPU: compute-floor ratios not given"


def report(args, devices: list[torch.device], rows: list[Row], infos: list[ArchInfo], default_bs: int,
           cache: SyntheticCache, wall_s: float) -> str:
    from evalkit.engine import default_precision

    out = []
    for device in devices:
        name, peak, why = device_label(device)
        precision = args.precision or default_precision(device.type)
        drows = [r for r in rows if r.device == str(device)]
        out.append(f"### {device}: {name}\n")
        low = "" if precision in ("amp_bf16", "amp_fp16") else f" (the run is {precision}: ratios still against bf16)"
        out.append(f"- precision {precision} (the engine's default on {device.type} unless --precision); "
                   f"compute-floor peaks: {peak:.0f} TFLOP/s ({why}) and the issue's {REFERENCE_PEAK:.0f} TFLOP/s "
                   f"H100-class reference{low}" if peak else f"- precision {precision}; {why}")
        out.append(f"- engine path: `run_dataset` + zero-shot classification runner `update`/`result` (1000 classes), "
                   f"batch {default_bs} = `RunOptions().batch_size` (marked *) and the sweep; 2 warm-ups per config "
                   "through the same reader; synthetic uint8 pixels from the decode cache's memmap (page-cache warm, "
                   "no JPEG decode)")
        short = sorted({r.n for r in drows if r.n < IMAGENET_PASS})
        if short:
            out.append(f"- s per pass: measured on {', '.join(map(str, short))} images where the config's n is below "
                       f"{IMAGENET_PASS}, extrapolated linearly to one {IMAGENET_PASS}-image ImageNet pass"
                       + (" (fewer than --n because of --budget-s)" if any(r.n < args.n for r in drows) else ""))
        out.append("")
        out.append("| arch | batch | images timed | images/s | s per ImageNet pass | image GFLOPs/img | TFLOP/s achieved "
                   "| x floor (own peak) | x floor (800) | result() s | peak GPU GiB | host RSS peak GiB (anon) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in drows:
            tflops = r.gflops * r.ips / 1e3
            per_pass = IMAGENET_PASS / r.ips
            floor_own = f"{per_pass / (r.gflops * IMAGENET_PASS / (peak * 1e3)):.2f}" if peak else "-"
            floor_ref = f"{per_pass / (r.gflops * IMAGENET_PASS / (REFERENCE_PEAK * 1e3)):.2f}" if peak else "-"
            mem = f"{r.peak_gpu:.2f}" if r.peak_gpu is not None else "-"
            est = "" if r.n == IMAGENET_PASS else " (extrap.)"
            out.append(f"| {r.arch} | {r.batch}{'*' if r.default else ''} | {r.n} | {r.ips:.0f} | {per_pass:.2f}{est} "
                       f"| {r.gflops:.4g} | {tflops:.4g} | {floor_own} | {floor_ref} | {r.result_s:.3f} | {mem} "
                       f"| {r.rss / 2**30:.2f} ({r.rss_anon / 2**30:.2f}) |")
        out.append("")
        out.append("| arch | family | px | load s | classifier s (prompts) | table gflops_per_sample (image+text) "
                   "| floor s per pass (own peak / 800) |")
        out.append("|---|---|---|---|---|---|---|")
        for i in (i for i in infos if i.device == str(device)):
            table = f"{i.table:.4g}" if i.table is not None else "-"
            floor = (f"{i.gflops * IMAGENET_PASS / (peak * 1e3):.3f} / {i.gflops * IMAGENET_PASS / (REFERENCE_PEAK * 1e3):.3f}"
                     if peak else "-")
            out.append(f"| {i.arch} | {i.family} | {i.size} | {i.load_s:.1f} | {i.classifier_s:.2f} ({i.prompts}) "
                       f"| {table} | {floor} |")
        out.append("")
    out.append(f"An ImageNet pass costs the image forward per image (image GFLOPs) plus the text tower once for the "
               f"classifier; the table's gflops_per_sample counts both towers per sample. x floor = measured time / "
               f"(image GFLOPs x images / peak). Synthetic pixels written in {cache.write_s:.1f} s under {cache.dir} "
               f"({'kept' if cache.keep else 'removed after'}). Whole run {wall_s:.0f} s (budget {args.budget_s:.0f} s"
               f"{'; over budget: each config was still timed on at least 8 batches' if wall_s > args.budget_s else ''}).")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from evalkit.data.cache import default_cache_dir
    from evalkit.engine import RunOptions, default_device

    default_bs = RunOptions().batch_size
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="ViT-B-32,ViT-L-14,mammut_ViT-B-32", help="comma-separated evalkit/open_clip archs")
    ap.add_argument("--device", default=default_device(),
                    help="comma-separated devices, each benched in turn (cuda:0,cuda:1 or cpu); default: %(default)s")
    ap.add_argument("--batch-sizes", default="64,128,256,512",
                    help=f"sweep; the engine's default ({default_bs}) is always included")
    ap.add_argument("--n", type=int, default=IMAGENET_PASS,
                    help="images per config (default one ImageNet pass); fewer are extrapolated, and labelled so")
    ap.add_argument("--precision", default=None, help="fp32, amp_bf16, amp_fp16 (default: the engine's for the device)")
    ap.add_argument("--templates", type=int, default=None,
                    help="first N of imagenet1k's 80 templates for the classifier (default: all 80 on CUDA, 1 on CPU)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="where the synthetic pixels go (a private subfolder, removed after; N x 3 x S x S bytes, "
                         "7.5 GB for 50k at 224 px); default: evalkit's decode cache folder ($EVALKIT_CACHE or "
                         f"{default_cache_dir()})")
    ap.add_argument("--keep-cache", action="store_true", help="keep the synthetic pixels folder")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="wall-time budget of the whole run: configs that would not fit are timed on fewer images "
                         "(n, n/2, n/4, ...) and extrapolated (default %(default)s s, for < 8 min on one GPU)")
    ap.add_argument("--record", action="store_true", help="also write the table into bench/RESULTS.md (section 'gpu')")
    args = ap.parse_args(argv)

    start = _T0
    devices = [torch.device(d) for d in args.device.split(",") if d]
    for d in devices:
        if d.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"bench_gpu: {d} asked for, but CUDA is not available here (try --device cpu)")
    if args.templates is None:
        args.templates = 80 if all(d.type == "cuda" for d in devices) else 1
    sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b} | {default_bs})
    sizes = [default_bs] + [b for b in sizes if b != default_bs]
    cache = SyntheticCache(Path(args.cache_dir or default_cache_dir()).expanduser(), keep=args.keep_cache)
    print(f"# bench_gpu: synthetic pixels under {cache.dir}", file=sys.stderr, flush=True)
    rows: list[Row] = []
    infos: list[ArchInfo] = []
    try:
        n_archs = len([a for a in args.archs.split(",") if a])
        for di, device in enumerate(devices):
            after = (len(devices) - di - 1) * n_archs * len(sizes)
            r, i = bench_device(args, device, sizes, default_bs, cache, start + args.budget_s, after)
            rows += r
            infos += i
    finally:
        cache.close()
    body = report(args, devices, rows, infos, default_bs, cache, time.perf_counter() - start)
    print(body)
    if args.record:
        section = "gpu" if all(d.type == "cuda" for d in devices) else "gpu_cpu_smoke"
        write_section(section, "Engine image path vs compute floor" + ("" if section == "gpu" else " (CPU smoke)"),
                      body, "python bench/" + Path(__file__).name + " " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
