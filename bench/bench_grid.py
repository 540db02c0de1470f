"""evalkit vs clip_benchmark's CLI on the embedded micro grid, side by side in one run.

Every CLIP checkpoint of the micro grid x (wds classification + wds retrieval), same batch size,
fp32 (`--no_amp`), CPU, and the same data-loading workers (`--num-workers`, default 0, given to both
tools). Both start cold (clip_benchmark has no cache; evalkit's decode cache is emptied first), and
then evalkit runs again on a warm cache as a second grid evaluation would. Wall-clock ratio and peak
RSS are recorded in bench/RESULTS.md.

The numbers are checked, not assumed: every (checkpoint, task, metric) clip_benchmark reports must be
in evalkit's table (cold and warm run) within 1e-6, evalkit's `mean_recall@1` must equal the mean of
clip_benchmark's two recall@1, and every checkpoint x task must be present in both; anything else
is listed and the bench exits non-zero. There is no tie exception: with `--num_workers 0`
clip_benchmark reads the wds shards in file order, as evalkit does, and the numbers agree exactly.
With workers (`--num-workers 2`) its DataLoader interleaves the shards' batches, so samples are
indexed in another order; text retrieval over the embedded world's duplicate captions has exactly
tied scores, which `torch.topk` breaks by position, so some text-retrieval recalls then differ and
this bench fails, by design.

Two image styles over the same 400 test images: the embedded world's 64x64 thumbnails as stored,
and the same images re-encoded as ImageNet-val-sized JPEGs (500x375), where decoding costs what it
costs on real data (both tools still resize to the tiny models' 32 px).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import write_section  # noqa: E402

CB_LAUNCH = """
import resource, sys, open_clip
open_clip.add_model_config({configs!r})
from clip_benchmark.cli import main
sys.argv = ["clip_benchmark"] + sys.argv[1:]
main()
"""

TIMED = """
import resource, subprocess, sys, time
t = time.time(); r = subprocess.run(sys.argv[1:]); dt = time.time() - t
print("BENCH", dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, flush=True)
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the process tree's largest process)."""
    out = subprocess.run([sys.executable, "-c", TIMED, *cmd], env=env, capture_output=True, text=True, cwd=REPO)
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH")]
    if not line or line[-1].split()[3] != "0":
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    _, dt, rss, _ = line[-1].split()
    return float(dt), int(rss) / 1024


def imagenet_sized(src: Path, dst: Path, size: tuple[int, int] = (500, 375)) -> Path:
    """A copy of a wds folder whose JPEGs are re-encoded at ImageNet val's typical size."""
    import io
    import tarfile

    from PIL import Image

    for f in src.rglob("*"):
        out = dst / f.relative_to(src)
        if f.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif f.suffix != ".tar":
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(f) as tin, tarfile.open(out, "w") as tout:
                for m in tin.getmembers():
                    data = tin.extractfile(m).read()
                    if m.name.endswith(".jpg"):
                        buf = io.BytesIO()
                        Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
                        data = buf.getvalue()
                    info = tarfile.TarInfo(m.name)
                    info.size = len(data)
                    tout.addfile(info, io.BytesIO(data))
    return dst


TOL = 1e-6


def caption_stats(folder: Path) -> tuple[int, int, int]:
    """(captions, distinct caption texts, captions whose exact text another image also has) of a wds folder."""
    import tarfile

    owners: dict[str, set[str]] = {}
    captions = []
    for tar in sorted((folder / "test").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".txt"):
                    for c in t.extractfile(m).read().decode().splitlines():
                        captions.append(c)
                        owners.setdefault(c, set()).add(m.name.rsplit(".", 1)[0])
    return len(captions), len(owners), sum(len(owners[c]) > 1 for c in captions)


def compare(cb_dir: Path, tables: dict[str, Any], checkpoints: list[str], tasks: list[str]
            ) -> tuple[int, float, list[str]]:
    """Every clip_benchmark number against evalkit's tables: (values compared, max abs difference,
    problems). A problem is a value off by more than TOL, or a (checkpoint, task, metric) one tool has
    and the other lacks; `mean_recall@1` (evalkit only) is checked as the mean of clip_benchmark's
    two recall@1."""
    problems: list[str] = []
    cb: dict[tuple[str, str], dict[str, float]] = {}
    for f in sorted(cb_dir.glob("*.json")):
        res = json.loads(f.read_text())
        cb[(res["pretrained"], "wds/" + res["dataset"].split("/")[-1])] = {k: float(v) for k, v in res["metrics"].items()}
    for key in [(c, t) for c in checkpoints for t in tasks]:
        if key not in cb:
            problems.append(f"missing: clip_benchmark wrote no result for {_name(key[0])} {key[1]}")
    n, worst = 0, 0.0
    for label, table in tables.items():
        ok = table[table.status == "ok"]
        for _, row in table[table.status != "ok"].iterrows():
            problems.append(f"failed: evalkit ({label}) {_name(row.checkpoint)} {row.task}: {row.error}")
        ek = {(r.checkpoint, r.task, r.metric): float(r.value) for r in ok.itertuples()}
        for (ckpt, task), metrics in cb.items():
            want = dict(metrics)
            if "image_retrieval_recall@1" in want and "text_retrieval_recall@1" in want:
                want["mean_recall@1"] = (want["image_retrieval_recall@1"] + want["text_retrieval_recall@1"]) / 2
            for metric, value in want.items():
                ours = ek.get((ckpt, task, metric))
                if ours is None:
                    problems.append(f"missing: evalkit ({label}) has no {_name(ckpt)} {task} {metric}")
                    continue
                n += 1
                both_nan = math.isnan(ours) and math.isnan(value)
                diff = 0.0 if both_nan else abs(ours - value)
                worst = max(worst, diff) if not math.isnan(diff) else math.inf
                if not diff <= TOL:
                    problems.append(f"differs: {_name(ckpt)} {task} {metric}: evalkit ({label}) {ours:.6f}, "
                                    f"clip_benchmark {value:.6f}")
            extra = {m for (c, t, m) in ek if (c, t) == (ckpt, task)} - set(want)
            for metric in sorted(extra):
                problems.append(f"not compared: evalkit ({label}) {_name(ckpt)} {task} {metric} has no clip_benchmark value")
        ek_keys = {(c, t) for (c, t, _) in ek}
        for ckpt, task in sorted(ek_keys - set(cb)):
            problems.append(f"missing: clip_benchmark has no {_name(ckpt)} {task}, evalkit ({label}) has")
    return n, worst, problems


def _name(ckpt: str) -> str:
    return f"{Path(ckpt).parent.parent.name}/{Path(ckpt).name}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per configuration")
    ap.add_argument("--styles", default="thumbnails,imagenet-sized")
    ap.add_argument("--scale-copies", type=int, default=0,
                    help="also time a grid of 16 x N checkpoint files (each micro grid file N times), ImageNet-sized images")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="data-loading workers of both tools (clip_benchmark --num_workers, evalkit --num-workers); "
                         "only 0 keeps clip_benchmark's wds sample order, see the module docstring")
    ap.add_argument("--contrast-workers", type=int, default=2,
                    help="also run clip_benchmark's retrieval once with this many workers (evalkit unchanged) and "
                         "report, without failing, what its sample order does to the numbers (0: skip)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    command = "python " + shlex.join(["bench/bench_grid.py", *sys.argv[1:]])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "evalkit.embedded.build"], check=True, env=env, cwd=REPO)
    import pandas as pd

    from evalkit.embedded.paths import data_root
    from evalkit.grids.zoo import grid_specs

    specs = [s for s in grid_specs("micro") if "mammut" not in s.model]  # clip_benchmark cannot load MaMMUT
    datasets = ("wds_shapes", "wds_shapes_captions")

    def measure(subset: list, tag: str, root: Path, repeat: int, copies: int = 1, contrast: int = 0) -> dict:
        """Both tools over `subset` (each file `copies` times, under other run names), best of `repeat`."""
        work = Path(tempfile.mkdtemp(prefix=f"evalkit-bench-{tag}-"))
        models = []
        for k in range(copies):
            for s in subset:  # the same files, as a grid evalkit can glob (params.txt beside checkpoints/)
                run_dir = Path(s.pretrained).parent.parent
                link = work / "links" / (run_dir.name + (f"-copy{k}" if k else "")) / "checkpoints"
                link.mkdir(parents=True, exist_ok=True)
                os.symlink(s.pretrained, link / Path(s.pretrained).name)
                models.append(f"{s.model},{link / Path(s.pretrained).name}\n")
                if not (link.parent / "params.txt").exists():
                    os.symlink(run_dir / "params.txt", link.parent / "params.txt")
        (work / "models.txt").write_text("".join(models))
        configs = str(REPO / "evalkit" / "models" / "model_configs")

        def cb_cmd(dataset: str, task: str, workers: int = args.num_workers, out: str = "cb") -> list[str]:
            return [sys.executable, "-c", CB_LAUNCH.format(configs=configs), "eval", "--pretrained_model",
                    str(work / "models.txt"), "--dataset", dataset, "--task", task,
                    "--dataset_root", str(root / "{dataset}"), "--no_amp", "--batch_size", str(args.batch_size),
                    "--num_workers", str(workers), "--recall_k", "1", "5", "10",
                    "--output", str(work / out / "{dataset}__{model}__{pretrained_full_path}.json")]

        ek_cmd = [sys.executable, "-m", "evalkit.cli", "run", "--checkpoints", str(work / "links" / "*" / "checkpoints" / "*.pt"),
                  "--tasks", ",".join(f"wds/{d}" for d in datasets), "--data-root", str(root / "{dataset}"),
                  "--device", "cpu", "--precision", "fp32", "--batch-size", str(args.batch_size), "--out", str(work / "ek"),
                  "--cache-dir", str(work / "cache"), "--num-workers", str(args.num_workers)]
        colds, warms, cbs, cb_rss, own = [], [], [], 0.0, []
        load = {}  # wall -> the 1-min load average when that run ended (the machine is shared)
        for _ in range(repeat):  # best of N: single runs of ~10 s are too noisy to difference
            shutil.rmtree(work / "cache", ignore_errors=True)
            shutil.rmtree(work / "ek", ignore_errors=True)
            t, ek_rss = timed(ek_cmd, env)
            colds.append(t)
            load[t] = os.getloadavg()[0]
            cold_table = pd.read_parquet(work / "ek" / "results.parquet")
            shutil.rmtree(work / "ek")
            warms.append(timed(ek_cmd, env)[0])
            load[warms[-1]] = os.getloadavg()[0]
            warm_table = pd.read_parquet(work / "ek" / "results.parquet")
            units = warm_table.drop_duplicates("unit_id")
            own.append(float(units.duration_s.sum()) / len(subset))  # evalkit's own account, start-up excluded
            shutil.rmtree(work / "cb", ignore_errors=True)
            (work / "cb").mkdir()
            cb_cls, rss1 = timed(cb_cmd(f"wds/{datasets[0]}", "zeroshot_classification"), env)
            cb_ret, rss2 = timed(cb_cmd(f"wds/{datasets[1]}", "zeroshot_retrieval"), env)
            cbs.append(cb_cls + cb_ret)
            load[cbs[-1]] = os.getloadavg()[0]
            cb_rss = max(cb_rss, rss1, rss2)
        ckpts = [m.split(",", 1)[1].strip() for m in models]
        n_cmp, worst, problems = compare(work / "cb", {"cold cache": cold_table, "warm cache": warm_table}, ckpts,
                                         [f"wds/{d}" for d in datasets])
        order = None
        if contrast and contrast != args.num_workers:  # the same retrieval, clip_benchmark with workers
            (work / "cb-contrast").mkdir()
            timed(cb_cmd(f"wds/{datasets[1]}", "zeroshot_retrieval", contrast, "cb-contrast"), env)
            c_n, c_worst, c_problems = compare(work / "cb-contrast", {"cold cache": cold_table[cold_table.task == f"wds/{datasets[1]}"]},
                                                  ckpts, [f"wds/{datasets[1]}"])
            metrics = sorted({p.split()[3].rstrip(":") for p in c_problems if p.startswith("differs")})
            order = {"workers": contrast, "captions": caption_stats(root / datasets[1]), "compared": c_n, "worst": c_worst, "metrics": metrics,
                     "differ": sum(p.startswith("differs") for p in c_problems),
                     "other": [p for p in c_problems if not p.startswith("differs")]}
        shutil.rmtree(work, ignore_errors=True)
        spread = max((max(v) - min(v)) / min(v) for v in (cbs, colds, warms))  # same run, repeated
        return {"n": len(subset) * copies, "cb": min(cbs), "cb_rss": cb_rss, "ek_cold": min(colds), "spread": spread,
                "load": {"cb": load[min(cbs)], "ek_cold": load[min(colds)], "ek_warm": load[min(warms)]},
                "ek_warm": min(warms), "ek_rss": ek_rss, "ek_own": min(own),
                "compared": n_cmp, "worst": worst, "problems": problems, "order": order}

    def images(style: str) -> tuple[Path, str]:
        if style == "thumbnails":
            return data_root(), "the embedded world's 64x64 JPEG thumbnails, as stored"
        if style == "imagenet-sized":
            tmp = Path(tempfile.mkdtemp(prefix="evalkit-bench-data-"))
            for d in datasets:
                imagenet_sized(data_root() / d, tmp / d)
            return tmp, "the same images re-encoded as 500x375 JPEGs (ImageNet val's typical size)"
        raise SystemExit(f"unknown style {style}: thumbnails or imagenet-sized")

    workers = (f"data-loading workers: {args.num_workers} for both tools (clip_benchmark `--num_workers "
               f"{args.num_workers}`, evalkit `--num-workers {args.num_workers}`)")
    failed = False

    def verdict(runs: list[dict]) -> str:
        """The check's outcome, computed from every comparison of `runs`."""
        nonlocal failed
        n = sum(r["compared"] for r in runs)
        worst = max((r["worst"] for r in runs), default=float("nan"))
        problems = [p for r in runs for p in r["problems"]]
        if not problems and n:
            return (f"Numbers checked: {n} values (every metric clip_benchmark reports for every checkpoint x task, "
                    "against evalkit's cold- and warm-cache tables, plus evalkit's mean_recall@1 as the mean of "
                    f"clip_benchmark's two recall@1): all equal within {TOL:g}, max abs difference {worst:.2e}.\n")
        failed = True
        shown = problems[:60]
        return (f"**CHECK FAILED**: {len(problems)} problem(s) over {n} values compared (tolerance {TOL:g}, max abs "
                f"difference {worst:.2e}); the bench exits non-zero.\n"
                + "".join(f"- {p}\n" for p in shown)
                + (f"- ... and {len(problems) - len(shown)} more\n" if len(problems) > len(shown) else ""))

    def contrast_note(runs: list[dict]) -> str:
        """What clip_benchmark's sample order with workers does, measured (reported, never a pass)."""
        o = next((r["order"] for r in runs if r.get("order")), None)
        if o is None:
            return ""
        other = f" (and {len(o['other'])} other problem(s): {'; '.join(o['other'][:3])})" if o["other"] else ""
        return (
            f"\nWhy the worker setting must match (measured in this run, not part of the check): the same retrieval "
            f"run with clip_benchmark `--num_workers {o['workers']}` (evalkit unchanged) differs from evalkit on "
            f"{o['differ']} of {o['compared']} values, max abs difference {o['worst']:.4f}, metrics: "
            f"{', '.join(o['metrics']) or 'none'}{other}. With workers, its DataLoader gives each worker one wds shard "
            "and interleaves their batches, so images and captions are indexed in another order than the files' "
            "(evalkit's, and clip_benchmark's own with 0 workers). Features do not depend on the order, but the "
            f"embedded captions repeat ({o['captions'][1]:,} distinct texts among {o['captions'][0]:,} captions; "
            f"{o['captions'][2]:,} captions share their exact text with another image's), so an image query sees exactly "
            "tied caption scores, and `torch.topk` breaks "
            "exact ties by position: which tied caption enters the top k, and so text-retrieval recall, depends on the "
            "sample order. Image-retrieval recalls "
            + ("also differed" if any(m.startswith("image_retrieval") for m in o["metrics"]) else "did not differ")
            + "; classification (each image scored on its own) does not depend on the order and was not rerun.\n"
        )

    if args.scale_copies:
        root, note = images("imagenet-sized")
        big = measure(specs, "scale", root, 1, copies=args.scale_copies)
        shutil.rmtree(root, ignore_errors=True)
        body = (
            f"A grid of {big['n']} checkpoint files: the {len(specs)} CLIP checkpoints of the micro grid, each "
            f"{args.scale_copies} times under other run names (both tools do a checkpoint's full work for every file), "
            f"x the same 2 tasks, {note}; batch {args.batch_size}, fp32, CPU, {workers}; one run each, start-up "
            "included.\n\n"
            "| run | wall (s) | s per checkpoint, all included | peak RSS (MiB) | end-to-end speed-up | "
            "load avg (1 min) when the run ended |\n|---|---|---|---|---|---|\n"
            f"| clip_benchmark CLI | {big['cb']:.1f} | {big['cb'] / big['n']:.3f} | {big['cb_rss']:.0f} | 1.0x | "
            f"{big['load']['cb']:.1f} |\n"
            f"| evalkit, cold decode cache | {big['ek_cold']:.1f} | {big['ek_cold'] / big['n']:.3f} | {big['ek_rss']:.0f} | "
            f"{big['cb'] / big['ek_cold']:.1f}x | {big['load']['ek_cold']:.1f} |\n"
            f"| evalkit, warm decode cache | {big['ek_warm']:.1f} | {big['ek_warm'] / big['n']:.3f} | | "
            f"{big['cb'] / big['ek_warm']:.1f}x | {big['load']['ek_warm']:.1f} |\n\n"
            "On an idle 2-core machine the load average stays near 1-2 while one tool runs; much higher means other "
            "jobs shared the cores during that run: its wall is inflated, and the speed-up with it (up if clip_benchmark's "
            "run was the busier one, down if evalkit's was).\n\n"
            + verdict([big])
        )
        print(body)
        if not args.no_write:
            write_section("grid-scale", "Grid at scale: evalkit vs clip_benchmark CLI, end to end (CPU)", body, command)

    styles = [s for s in args.styles.split(",") if s]
    sections, runs = [], []
    for style in styles:
        root, note = images(style)
        small = measure(specs[:2], "small", root, args.repeat)
        full = measure(specs, "full", root, args.repeat, contrast=args.contrast_workers if not runs else 0)
        if style != "thumbnails":
            shutil.rmtree(root, ignore_errors=True)
        marg = {k: (full[k] - small[k]) / (full["n"] - small["n"]) for k in ("cb", "ek_cold", "ek_warm")}
        runs += [small, full]
        sections.append(
            f"### Images: {note}\n\n"
            f"| run | wall, {full['n']} ckpts (s) | wall, {small['n']} ckpts (s) | marginal s per checkpoint | "
            f"peak RSS (MiB) | end-to-end speed-up | marginal speed-up | load avg (1 min) when the {full['n']}-ckpt run "
            "ended |\n|---|---|---|---|---|---|---|---|\n"
            f"| clip_benchmark CLI | {full['cb']:.1f} | {small['cb']:.1f} | {marg['cb']:.3f} | {full['cb_rss']:.0f} | 1.0x | "
            f"1.0x | {full['load']['cb']:.1f} |\n"
            f"| evalkit, cold decode cache | {full['ek_cold']:.1f} | {small['ek_cold']:.1f} | {marg['ek_cold']:.3f} | "
            f"{full['ek_rss']:.0f} | {full['cb'] / full['ek_cold']:.1f}x | {marg['cb'] / marg['ek_cold']:.1f}x | "
            f"{full['load']['ek_cold']:.1f} |\n"
            f"| evalkit, warm decode cache | {full['ek_warm']:.1f} | {small['ek_warm']:.1f} | {marg['ek_warm']:.3f} | | "
            f"{full['cb'] / full['ek_warm']:.1f}x | {marg['cb'] / marg['ek_warm']:.1f}x | {full['load']['ek_warm']:.1f} |\n"
            f"| evalkit's own account (units' duration_s, warm) | | | {full['ek_own']:.3f} | | | "
            f"{marg['cb'] / full['ek_own']:.1f}x | |\n"
        )
    if styles:
        body = (
            f"{len(specs)} CLIP checkpoints of the micro grid x 2 tasks (wds classification, wds retrieval), "
            f"batch {args.batch_size}, fp32, CPU, {workers}; each tool runs as its own process(es), start-up "
            f"included; best of {args.repeat} runs each. Marginal = (wall at {len(specs)} - wall at 2) / "
            f"{len(specs) - 2}: the cost of one more checkpoint, without process start-up and imports (which a real "
            "grid of thousands of checkpoints pays once per shard). "
            + (f"Here the same run varied by up to {100 * max(r['spread'] for r in runs):.0f} % between its "
               f"{args.repeat} repeats (the load averages show how busy the shared machine was), "
               if args.repeat > 1 else "Each run was timed once, so its noise is not measured here; ")
            + "so the difference of two walls is noisier still; the last row is evalkit's own per-checkpoint time "
            f"(load + every task, summed from the units' duration_s over the {len(specs)}-checkpoint run), which does not "
            "depend on differencing.\n\n"
            + "\n".join(sections) + "\n" + verdict(runs) + contrast_note(runs)
        )
        print(body)
        if not args.no_write:
            write_section("grid", "Grid: evalkit vs clip_benchmark CLI (micro grid, CPU)", body, command)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
