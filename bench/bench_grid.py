"""evalkit vs clip_benchmark's CLI on the embedded micro grid, side by side in one run.

Every CLIP checkpoint of the micro grid x (wds classification + wds retrieval), same batch size,
fp32 (`--no_amp`), CPU. Both start cold (clip_benchmark has no cache; evalkit's decode cache is
emptied first), and then evalkit runs again on a warm cache as a second grid evaluation would.
The numbers must agree (1e-6); the wall-clock ratio and peak RSS are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "evalkit.embedded.build"], check=True, env=env, cwd=REPO)
    from evalkit.embedded.paths import data_root
    from evalkit.models.zoo import grid_specs

    specs = [s for s in grid_specs("micro") if "mammut" not in s.model]  # clip_benchmark cannot load MaMMUT
    work = Path(tempfile.mkdtemp(prefix="evalkit-bench-"))
    (work / "models.txt").write_text("".join(f"{s.model},{s.pretrained}\n" for s in specs))
    configs = str(REPO / "evalkit" / "models" / "model_configs")

    def cb_cmd(dataset: str, task: str) -> list[str]:
        return [sys.executable, "-c", CB_LAUNCH.format(configs=configs), "eval", "--pretrained_model",
                str(work / "models.txt"), "--dataset", dataset, "--task", task,
                "--dataset_root", str(data_root() / "{dataset}"), "--no_amp", "--batch_size", str(args.batch_size),
                "--num_workers", "2", "--recall_k", "1", "5", "10",
                "--output", str(work / "cb" / "{dataset}__{model}__{pretrained_full_path}.json")]

    (work / "cb").mkdir()
    ek_cmd = [sys.executable, "-m", "evalkit.cli", "run", "--grid", "micro", "--tasks", "wds/wds_shapes,wds/wds_shapes_captions",
              "--data-root", str(data_root() / "{dataset}"), "--device", "cpu", "--precision", "fp32",
              "--batch-size", str(args.batch_size), "--out", str(work / "ek"), "--cache-dir", str(work / "cache")]
    ek_cold, ek_rss = timed(ek_cmd, env)
    shutil.rmtree(work / "ek")
    ek_warm, _ = timed(ek_cmd, env)
    cb_cls, rss1 = timed(cb_cmd("wds/wds_shapes", "zeroshot_classification"), env)
    cb_ret, rss2 = timed(cb_cmd("wds/wds_shapes_captions", "zeroshot_retrieval"), env)
    cb_s, cb_rss = cb_cls + cb_ret, max(rss1, rss2)

    import pandas as pd

    table = pd.read_parquet(work / "ek" / "results.parquet")
    table = table[~table.arch.astype(str).str.contains("mammut")]
    worst, compared = 0.0, 0
    for f in (work / "cb").glob("*.json"):
        res = json.loads(f.read_text())
        ckpt = res["pretrained"]
        task = "wds/" + res["dataset"].split("/")[-1]
        for metric, value in res["metrics"].items():
            row = table[(table.checkpoint == ckpt) & (table.task == task) & (table.metric == metric)]
            if row.empty:
                continue
            worst = max(worst, abs(float(row.value.iloc[0]) - float(value)))
            compared += 1
    n_units = len(specs) * 2
    body = (
        f"{len(specs)} CLIP checkpoints of the micro grid x 2 tasks (wds classification, wds retrieval) = {n_units} units, "
        f"batch {args.batch_size}, fp32, CPU.\n\n"
        "| run | wall (s) | peak RSS (MiB) | vs clip_benchmark |\n|---|---|---|---|\n"
        f"| clip_benchmark CLI | {cb_s:.1f} | {cb_rss:.0f} | 1.0x |\n"
        f"| evalkit, cold decode cache | {ek_cold:.1f} | {ek_rss:.0f} | {cb_s / ek_cold:.1f}x faster |\n"
        f"| evalkit, warm decode cache | {ek_warm:.1f} | | {cb_s / ek_warm:.1f}x faster |\n\n"
        f"Numbers compared: {compared} (checkpoint, task, metric) values, max abs difference {worst:.2e}.\n"
        "Both wall times include process start-up and imports (about 5-10 s here), which dominate at this scale; "
        "clip_benchmark reloads the model per dataset, decodes every image per checkpoint and builds the classifier "
        "one class per forward.\n"
    )
    print(body)
    if not args.no_write:
        write_section("grid", "Grid: evalkit vs clip_benchmark CLI (micro grid, CPU)", body,
                      "python bench/bench_grid.py")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if compared and worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
