"""evalkit's linear probes vs clip_benchmark's `linear_probe`, on the same checkpoints and data, side by
side in one process: marginal cost per checkpoint and equal results.

Data: the embedded world's wds_shapes (train 200 images to fit, a seeded 20 % of them to choose the
weight decay, test 400 to score). Variants, as a grid measures them: the full-data probe with the
weight-decay search (`wds_shapes_lp`) and the 10-shot probe with the search (`wds_shapes_lp10`). Checkpoints:
the micro grid's CLIP runs, fp32, CPU, batch 64, data-loading workers 0 for both.

clip_benchmark runs its own `linear_probe.evaluate` per checkpoint and variant, patched only to run on
the CPU (its `.cuda()` calls are no-ops and the device string passes its `assert device == 'cuda'`),
with what its CLI does per checkpoint around it: build the model and its transform, build the wds
datasets, split the train set (its `random_split` cannot split a wds IterableDataset, the issue's point,
so it gets the decoded train split as a list; that decode is counted), featurize train/val/test (its
loaders get their own generators so the global RNG stays as seeded), and the second variant reuses
its feature cache (same model id, as a second CLI call with the same `--feature_root` would).
evalkit runs `engine.run` over the checkpoints with both tasks (decode cache warm, as from the second
checkpoint of any grid). Marginal cost per checkpoint: clip_benchmark, the mean over checkpoints 2..N
of each checkpoint's time; evalkit, (wall of the N-checkpoint run - wall of a 1-checkpoint run) /
(N - 1), and its own account (units' duration_s summed / N). Probe fitting alone is timed by wrapping
the fit functions (clip_benchmark's `train`, evalkit's `train_probes`).

Checked, not assumed: per checkpoint and variant the chosen weight decay is equal and lp_acc1, lp_acc5,
lp_mean_per_class_recall within one test sample (1/400) of clip_benchmark's; otherwise the bench exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_md import write_section  # noqa: E402

VARIANTS = {"wds_shapes_lp": -1, "wds_shapes_lp10": 10}
READING = ("Reading: the goal of a >= 10x lower cost is met for the probe fitting (the ~20 sequential fits that "
           "clip_benchmark spends its time on), and not necessarily for the whole marginal cost per checkpoint on "
           "the micro grid: with its fits down to a few hundredths of a second, evalkit's remaining time per "
           "checkpoint is loading the model and encoding the 600 train and test images, which both tools must do "
           "(evalkit without decoding them again). The tiny models make that encode cheap and the fits small; on "
           "real data the fits grow with the train split (ImageNet: 20,000 minibatches per epoch per fit) while "
           "evalkit runs 1-5 batched runs where clip_benchmark runs ~20 fits, each through a DataLoader over "
           "Python feature rows.")
N_TEST = 400


class _CpuCalledCuda(str):
    """'cpu' to torch, equal to 'cuda' for clip_benchmark's `assert device == 'cuda'`."""

    def __new__(cls) -> _CpuCalledCuda:
        return str.__new__(cls, "cpu")

    def __eq__(self, other: object) -> bool:
        return other == "cuda" or str.__eq__(self, other)

    __hash__ = str.__hash__


class Timer:
    """Wraps a function and sums the seconds spent in it."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t


def clip_benchmark_checkpoint(spec: Any, root: Path, feature_root: Path, model_id: str, zeroshot: bool) -> dict[str, dict]:
    """What clip_benchmark computes for one checkpoint: both variants (and zero-shot on the test split),
    from the checkpoint file."""
    import open_clip
    import torch
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import linear_probe as cb

    from evalkit.models.checkpoint import read_state_dict
    from evalkit.tasks.protocols.linear_probe import split_train_val

    open_clip.add_model_config(REPO / "evalkit" / "models" / "model_configs")
    model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=None)
    model.load_state_dict(read_state_dict(spec.pretrained))
    model.eval()

    def loader(ds: Any) -> Any:
        return torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, num_workers=0, generator=torch.Generator())

    train = list(build_dataset("wds/wds_shapes", root=str(root), transform=preprocess, split="train"))
    test = build_dataset("wds/wds_shapes", root=str(root), transform=preprocess, split="test")
    tr, va = split_train_val(len(train), 0.2, 0)
    out = {}
    if zeroshot:
        from clip_benchmark.metrics import zeroshot_classification as zs

        out["wds/wds_shapes"] = zs.evaluate(model, loader(test), open_clip.get_tokenizer(spec.model),
                                            (root / "classnames.txt").read_text().splitlines(),
                                            (root / "zeroshot_classification_templates.txt").read_text().splitlines(),
                                            "cpu", amp=False)
    for task, k in VARIANTS.items():
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            out[task] = cb.evaluate(model, loader(torch.utils.data.Subset(train, tr)), loader(test), k, 64, 0, 0.1, 10,
                                    model_id, 0, str(feature_root), _CpuCalledCuda(),
                                    val_dataloader=loader(torch.utils.data.Subset(train, va)), normalize=True, amp=False)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=4, help="CLIP checkpoints of the micro grid (>= 2)")
    ap.add_argument("--threads", default="1",
                    help="torch intra-op threads for both tools, one configuration each: numbers and/or 'default'")
    ap.add_argument("--no-zeroshot", action="store_true", help="only the probes-alone scenario")
    ap.add_argument("--repeat", type=int, default=3, help="best of N per measurement")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import pandas as pd
    import torch
    from clip_benchmark.metrics import linear_probe as cb

    import evalkit.tasks.protocols.linear_probe as lp
    from evalkit.embedded.paths import data_root
    from evalkit.engine import RunOptions, run
    from evalkit.grids.zoo import grid_specs
    from evalkit.results.store import collect
    from evalkit.tasks.loader import get_task

    torch.Tensor.cuda = lambda self, *a, **k: self  # clip_benchmark's probe on this CPU machine
    torch.nn.Module.cuda = lambda self, *a, **k: self
    cb_train, ek_train = Timer(cb.train), Timer(lp.train_probes)
    cb.train, lp.train_probes = cb_train, ek_train
    specs = [s for s in grid_specs("micro") if s.model.startswith("tinyclip")][: args.checkpoints]
    root = data_root() / "wds_shapes"
    default_threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench_probe-"))
    tasks = [get_task(t) for t in VARIANTS]

    def ek_run(subset: list, tag: str, tasks: list) -> tuple[float, pd.DataFrame]:
        t = time.perf_counter()
        run(subset, tasks, RunOptions(data_root=str(root.parent / "{dataset}"), out=work / tag, device="cpu", precision="fp32", cache_dir=work / "cache",
                                      num_workers=0, progress=False))
        dt, table = time.perf_counter() - t, collect(work / tag)
        failed = table[table.status != "ok"]
        if len(failed):
            raise SystemExit(f"evalkit units failed: {sorted(set(failed.error))}")
        return dt, table

    ek_run(specs[:1], "warmup", tasks)  # imports, decode cache: paid once per grid
    problems: list[str] = []
    rows = []

    def check(spec: Any, ok: pd.DataFrame, got: dict[str, dict]) -> None:
        for task, theirs in got.items():
            ours = ok[(ok.checkpoint == spec.pretrained) & (ok.task == task)].set_index("metric").value
            keys = ["acc1", "acc5", "mean_per_class_recall"] if task.startswith("wds/") else [
                "lp_acc1", "lp_acc5", "lp_mean_per_class_recall"]
            if not task.startswith("wds/") and not math.isclose(float(ours.get("weight_decay", float("nan"))),
                                                                 theirs["weight_decay"], rel_tol=1e-12):
                problems.append(f"{spec.name} {task}: weight_decay {ours.get('weight_decay')} vs {theirs['weight_decay']}")
            for m in keys:
                a, b = float(ours.get(m, float("nan"))), float(theirs[m])
                if not (math.isclose(a, b, abs_tol=1 / N_TEST + 1e-9) or (math.isnan(a) and math.isnan(b))):
                    problems.append(f"{spec.name} {task}: {m} {a} vs {b}")

    for scenario, zeroshot in (("probes", False), ("zero-shot + probes", True)):
        if scenario == "zero-shot + probes" and args.no_zeroshot:
            continue
        ek_tasks = tasks + ([get_task("wds/wds_shapes")] if zeroshot else [])
        for setting in [x.strip() for x in args.threads.split(",") if x.strip()]:
            threads = default_threads if setting == "default" else int(setting)
            torch.set_num_threads(threads)
            ek_t1, ek_tn, ek_own, ek_fit = [], [], [], []
            cb_t: list[list[float]] = [[] for _ in specs]
            cb_f: list[list[float]] = [[] for _ in specs]
            for rep in range(args.repeat):  # the tools interleaved, best of N per measurement: the machine is shared
                tag = f"{scenario[:4]}-{setting}-{rep}"
                ek_train.seconds = 0.0
                t1, _ = ek_run(specs[:1], f"one-{tag}", ek_tasks)
                fit_one = ek_train.seconds
                ek_train.seconds = 0.0
                tn, table = ek_run(specs, f"all-{tag}", ek_tasks)
                ek_t1.append(t1)
                ek_tn.append(tn)
                ek_fit.append((ek_train.seconds - fit_one) / (len(specs) - 1))
                ek_own.append(float(table.drop_duplicates("unit_id").duration_s.sum()) / len(specs))
                ok = table[table.status == "ok"]
                for i, spec in enumerate(specs):
                    cb_train.seconds = 0.0
                    t = time.perf_counter()
                    got = clip_benchmark_checkpoint(spec, root, work / f"cb-{tag}", f"ckpt{i}", zeroshot)
                    cb_t[i].append(time.perf_counter() - t)
                    cb_f[i].append(cb_train.seconds)
                    check(spec, ok, got)
            cb_marginal = sum(min(v) for v in cb_t[1:]) / (len(specs) - 1)  # checkpoints 2..N, best of the repeats
            cb_fit = sum(min(v) for v in cb_f[1:]) / (len(specs) - 1)
            spread = max((max(v) - min(v)) / min(v) for v in [ek_tn, *cb_t])
            rows.append({"scenario": scenario, "threads": f"{threads}" + (" (torch's default)" if setting == "default" else ""),
                         "cb": cb_marginal, "cb_fit": cb_fit, "ek": (min(ek_tn) - min(ek_t1)) / (len(specs) - 1),
                         "ek_own": min(ek_own), "ek_fit": min(ek_fit), "spread": spread})
    torch.set_num_threads(default_threads)

    n_compared = len(specs) * len(VARIANTS)
    lines = [f"{len(specs)} CLIP checkpoints of the micro grid x 2 probe variants (`wds_shapes_lp`: full data, weight "
             "decay searched on a seeded 20 % of the 200 train images, refit on all; `wds_shapes_lp10`: 10-shot with the "
             "search), scored on the 400 test images; in the second scenario also zero-shot classification of the "
             "same 400 test images (`wds/wds_shapes`), as a grid measures both. fp32, CPU, batch 64, 0 data-loading "
             "workers, the same torch intra-op thread count for both tools (evalkit's small probe fits always "
             f"run on 1), one process; best of {args.repeat} per measurement, the tools interleaved. The machine is "
             "shared with other jobs (see the load average and the spread column: how much one measurement varied "
             "between repeats), so absolute seconds are noisy.", "",
             "Marginal cost per checkpoint (seconds; both probe variants, and zero-shot where listed): "
             "clip_benchmark, the mean over checkpoints 2..N of each checkpoint's time (load, datasets, "
             "featurize, fits); evalkit, (N-checkpoint run - 1-checkpoint run) / (N - 1), and its own account "
             "(units' duration_s summed / N). Probe fitting: the time inside clip_benchmark's `train` / "
             "evalkit's `train_probes`.", "",
             "| scenario | threads | clip_benchmark s/ckpt | evalkit s/ckpt (own account) | lower by | clip_benchmark fitting s/ckpt | evalkit fitting s/ckpt | lower by | spread |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['threads']} | {r['cb']:.3f} | {r['ek']:.3f} ({r['ek_own']:.3f}) | "
                     f"{r['cb'] / r['ek']:.1f}x ({r['cb'] / r['ek_own']:.1f}x) | {r['cb_fit']:.3f} | {r['ek_fit']:.3f} | "
                     f"{r['cb_fit'] / r['ek_fit']:.0f}x | {100 * r['spread']:.0f} % |")
    lines += ["", f"Results checked in every configuration and repeat, on {n_compared} (checkpoint, variant) pairs "
              "(and the zero-shot metrics where run): "
              + ("the chosen weight decay equal and lp_acc1 / lp_acc5 / lp_mean_per_class_recall within 1/400 on every "
                 "one." if not problems else f"{len(problems)} differ: " + "; ".join(problems[:10]))]
    lines += ["", READING]
    print("\n".join(lines))
    if not args.no_write:
        write_section("probe", "Linear probes: evalkit vs clip_benchmark's linear_probe (micro grid, CPU)",
                      "\n".join(lines), "python bench/bench_probe.py " + " ".join(sys.argv[1:]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
