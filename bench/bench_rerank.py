"""`rerank_top_k: K` against the full generative score on the embedded world.

rerank scores only the K classes the contrastive head ranks highest per image (MaMMUT, CoCa), an
approximation that is never the default. This measures what it costs in agreement: on the whole
shapes test split (400 images, 10 classes x 7 templates), each MaMMUT checkpoint of the micro grid runs
`shapes_generative` unreranked and with K = 1, 2, 3, 5 in one process; reported per (checkpoint, K): the
top-1 agreement with the full score (images whose predicted class is the same), acc1 of both, and the
time of each unit (the decoder's cost falls as K / 10).

    python bench/bench_rerank.py            # + --record: bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

KS = (1, 2, 3, 5)


def _task_files(folder: Path) -> list[str]:
    names = []
    for k in (None, *KS):
        name = "shapes_generative_all" if k is None else f"shapes_generative_top{k}"
        extra = "" if k is None else f"rerank_top_k: {k}\n"
        (folder / f"{name}.yaml").write_text(f"include: shapes_generative\nname: {name}\nmax_per_class: null\n{extra}")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pandas as pd

    import evalkit
    from evalkit.embedded.grid import get_run, model_config_path
    from evalkit.models.spec import ModelSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", default="4,8", help="MaMMUT checkpoints of the micro grid (comma-separated epochs)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    run = get_run("mammut-tiny-S_s4k")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["EVALKIT_TASKS"] = str(tmp)
        names = _task_files(tmp)
        for epoch in map(int, args.epochs.split(",")):
            spec = ModelSpec(model=str(model_config_path(run.model)), pretrained=str(run.checkpoint(epoch)),
                             name=f"{run.name}/epoch_{epoch}")
            out = tmp / f"out{epoch}"
            t0 = time.perf_counter()
            table = evalkit.evaluate([spec], names, out=out, device="cpu", log_samples=True, cache_dir=tmp / "cache")
            wall = time.perf_counter() - t0
            ok = table[table.metric == "acc1"].set_index("task")
            assert (ok.status == "ok").all(), ok.error.tolist()
            pred = {}
            for name in names:
                uid = ok.loc[name, "unit_id"]
                s = pd.read_parquet(out / "samples" / f"{uid}.parquet")
                pred[name] = np.array([int(t[0]) for t in s.top_indices])
            full = pred[names[0]]
            for k, name in zip((None, *KS), names, strict=True):
                rows.append({"checkpoint": spec.name, "K": k or "all (full)", "images": len(full),
                             "agreement": float((pred[name] == full).mean()), "acc1": float(ok.loc[name, "value"]),
                             "acc1_full": float(ok.loc[names[0], "value"])})
            print(f"{spec.name}: {len(names)} units in {wall:.1f} s", flush=True)
    lines = ["| checkpoint | K | images | top-1 agreement with the full score | acc1 (K) | acc1 (full) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['K']} | {r['images']} | {r['agreement']:.4f} | {r['acc1']:.4f} | "
                     f"{r['acc1_full']:.4f} |")
    body = "\n".join(lines) + (
        "\n\nReading: `rerank_top_k` keeps the full score's prediction wherever the contrastive head's top K hold "
        "it, so the agreement is the approximation's whole cost; K = 1 is the contrastive head's own prediction (its "
        "acc1 is the contrastive task's). The decoder's work is K / 10 of the full score's (per-K time is not "
        "shown: a checkpoint's units share one duration). On ImageNet-1k the paper's comparison needs the full "
        "score, which is why rerank is never the default.\n")
    print(body)
    if args.record:
        from _results_md import write_section

        write_section("rerank", "rerank_top_k against the full generative score (bench_rerank.py)", body,
                      "python bench/bench_rerank.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
