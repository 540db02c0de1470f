"""evalkit's linear probes vs clip_benchmark's `linear_probe`, on the same checkpoints and data, side by
side in one process: marginal cost per checkpoint and equal results.

Data: the embedded world's wds_shapes (train 200 images to fit, a seeded 20 % of them to choose the
weight decay, test 400 to score). Variants, as a grid measures them: the full-data probe with the
weight-decay search (`shapes_lp`) and the 10-shot probe with the search (`shapes_lp10`). Checkpoints:
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

VARIANTS = {"shapes_lp": -1, "shapes_lp10": 10}
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


def clip_benchmark_checkpoint(spec: Any, root: Path, feature_root: Path, model_id: str) -> dict[str, dict]:
    """What clip_benchmark computes for one checkpoint: both variants, from the checkpoint file."""
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
    ap.add_argument("--cb-threads", default="default,1",
                    help="torch intra-op threads for clip_benchmark's runs: 'default' and/or numbers")
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

    def ek_run(subset: list, tag: str) -> tuple[float, pd.DataFrame]:
        t = time.perf_counter()
        run(subset, tasks, RunOptions(out=work / tag, device="cpu", precision="fp32", cache_dir=work / "cache",
                                      num_workers=0, progress=False))
        return time.perf_counter() - t, collect(work / tag)

    ek_run(specs[:1], "warmup")  # imports, decode cache: paid once per grid
    ek_train.seconds = 0.0
    t1, _ = ek_run(specs[:1], "one")
    fit_one = ek_train.seconds
    ek_train.seconds = 0.0
    tn, table = ek_run(specs, "all")
    fit_all = ek_train.seconds
    ok = table[table.status == "ok"]
    ek_marginal = (tn - t1) / (len(specs) - 1)
    units = table.drop_duplicates("unit_id")
    ek_own = float(units.duration_s.sum()) / len(specs)

    cb_rows: dict[str, dict] = {}
    problems: list[str] = []
    for setting in [s.strip() for s in args.cb_threads.split(",") if s.strip()]:
        torch.set_num_threads(default_threads if setting == "default" else int(setting))
        times, fits = [], []
        for i, spec in enumerate(specs):
            cb_train.seconds = 0.0
            t = time.perf_counter()
            got = clip_benchmark_checkpoint(spec, root, work / f"cb-features-{setting}", f"ckpt{i}")
            times.append(time.perf_counter() - t)
            fits.append(cb_train.seconds)
            for task, theirs in got.items():
                ours = ok[(ok.checkpoint == spec.pretrained) & (ok.task == task)].set_index("metric").value
                if not math.isclose(float(ours.get("weight_decay", float("nan"))), theirs["weight_decay"], rel_tol=1e-12):
                    problems.append(f"{spec.name} {task}: weight_decay {ours.get('weight_decay')} vs {theirs['weight_decay']}")
                for m in ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall"):
                    a, b = float(ours.get(m, float("nan"))), float(theirs[m])
                    if not (math.isclose(a, b, abs_tol=1 / N_TEST + 1e-9) or (math.isnan(a) and math.isnan(b))):
                        problems.append(f"{spec.name} {task}: {m} {a} vs {b}")
        label = f"{default_threads} (default)" if setting == "default" else setting
        cb_rows[label] = {"marginal": sum(times[1:]) / (len(times) - 1), "fit": sum(fits[1:]) / (len(fits) - 1),
                          "first": times[0]}
    torch.set_num_threads(default_threads)

    n_compared = len(specs) * len(VARIANTS)
    lines = [f"{len(specs)} CLIP checkpoints of the micro grid x 2 probe variants (`shapes_lp`: full data, weight "
             "decay searched on a seeded 20 % of the 200 train images, refit on all; `shapes_lp10`: 10-shot with the "
             "search), scored on the 400 test images; fp32, CPU, batch 64, 0 data-loading workers for both, one "
             "process. The machine is shared with other jobs (see the load average), so absolute seconds are noisy; "
             "both tools ran in the same minutes.", "",
             "| tool | torch threads | marginal s per checkpoint (both variants) | of which probe fitting |",
             "|---|---|---|---|"]
    ek_fit = (fit_all - fit_one) / (len(specs) - 1)
    for label, r in cb_rows.items():
        lines.append(f"| clip_benchmark linear_probe | {label} | {r['marginal']:.3f} | {r['fit']:.3f} |")
    lines.append(f"| evalkit linear_probe | {default_threads} (default; small fits on 1) | {ek_marginal:.3f} | {ek_fit:.3f} |")
    lines.append(f"| evalkit, its own account (units' duration_s / checkpoint) | | {ek_own:.3f} | |")
    lines += ["", "| evalkit's cost as a fraction of clip_benchmark's | marginal per checkpoint | probe fitting |",
              "|---|---|---|"]
    for label, r in cb_rows.items():
        lines.append(f"| vs clip_benchmark on {label} threads | {r['marginal'] / ek_marginal:.1f}x lower "
                     f"(own account: {r['marginal'] / ek_own:.1f}x) | {r['fit'] / ek_fit:.1f}x lower |")
    lines += ["", f"Results checked on {n_compared} (checkpoint, variant) pairs: "
              + ("the chosen weight decay equal and lp_acc1 / lp_acc5 / lp_mean_per_class_recall within 1/400 on every "
                 "one." if not problems else f"{len(problems)} differ: " + "; ".join(problems[:10]))]
    print("\n".join(lines))
    if not args.no_write:
        write_section("probe", "Linear probes: evalkit vs clip_benchmark's linear_probe (micro grid, CPU)",
                      "\n".join(lines), "python bench/bench_probe.py " + " ".join(sys.argv[1:]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
