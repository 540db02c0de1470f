"""Run every CPU benchmark and record them in bench/RESULTS.md (`make bench`). The GPU one runs only
where CUDA is available, the report's only where a Chromium is installed (`.ci/chromium.sh install`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    cmds = [["bench_cache.py"], ["bench_grid.py"], ["bench_grid.py", "--styles", "", "--scale-copies", "4"],
            ["bench_fit.py"], ["bench_plan.py"], ["bench_probe.py"],
            ["bench_generative.py", "--images", "8", "--classes", "10", "--batch", "8", "--record"],
            ["bench_rerank.py", "--record"]]
    import shutil

    if any(shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")):  # the page's load time
        cmds.append(["bench_report.py"])
    import torch

    if torch.cuda.is_available():
        cmds.append(["bench_gpu.py", "--archs", "ViT-B-32,ViT-L-14,mammut_ViT-B-32", "--record"])
        cmds.append(["bench_generative.py", "--device", "cuda", "--archs", "mammut_ViT-B-32,mammut_ViT-L-14",
                     "--images", "64", "--batch", "64", "--classes", "20", "--record"])
    rc = 0
    for cmd in cmds:
        print(f"== {' '.join(cmd)}", flush=True)
        rc |= subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]]).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
