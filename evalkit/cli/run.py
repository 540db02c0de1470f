"""`evalkit run | submit | models | tasks | collect | cache`: evaluating, and what it reads and writes."""

from __future__ import annotations

import argparse
import os
import re
import sys


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard takes i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {value}: need 0 <= i < n")
    return i, n


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value}: need at least 1")
    return n


def _device(value: str) -> str:
    if value == "cpu" or re.fullmatch(r"cuda(:\d+)?", value):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: expected cpu, cuda or cuda:N")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate")
    src.add_argument("--model", help="zoo name, open_clip/evalkit arch, hf-hub:ORG/REPO, local-dir:DIR or config JSON")
    src.add_argument("--pretrained", help="pretrained tag or weights file (with an architecture --model)")
    src.add_argument("--checkpoints", help="glob of checkpoint files, e.g. 'logs/*/checkpoints/epoch_*.pt'")
    src.add_argument("--run-dir", help="folder holding open_clip runs (*/params.txt, */checkpoints/epoch_N.pt) or the "
                     "paper's grid (<full_name>/epoch_N.pt [+ cache/results.parquet], <run>/checkpoints/epoch_N.pt)")
    src.add_argument("--grid", help="a grid declared in checkpoints.yaml, or hf-hub:ORG/REPO[@REVISION]: a hub repo in the "
                     "paper's layout (<full_name>/epoch_N.pt + results.parquet), checkpoints downloaded just in time")
    src.add_argument("--keep-checkpoints", action="store_true",
                     help="--grid hf-hub:...: keep the downloaded checkpoints in the HF cache (default: each is deleted "
                          "once its units are written)")
    src.add_argument("--family", help="force the model family (clip, mammut)")
    src.add_argument("--where", help="select grid checkpoints, e.g. 'namespace=mammut,model_simple=ViT-B-32|ViT-S-32,"
                     "pretrain_dataset=datacomp_1b,samples_seen_scale_pretty=1.28B,lr_scheduler=cosine' (several "
                     "values per key separated by |)")
    src.add_argument("--epochs", help="grid checkpoints to evaluate per run: all (default), last, or e.g. 1,5,10")
    p.add_argument("--tasks", required=True, help="comma-separated task names (`evalkit tasks`) or wds/NAME")
    p.add_argument("--data-root", help="dataset folder, or a template with {dataset}")
    p.add_argument("--out", default="results", help="results folder (default: results/)")
    p.add_argument("--device", type=_device, help="cpu, cuda or cuda:N (default: cuda:<local rank> when a GPU "
                   "is usable; asking for cuda where none is usable is an error)")
    p.add_argument("--precision", choices=["fp32", "amp_bf16", "amp_fp16"],
                   help="default: amp_bf16 on cuda, fp32 on cpu (amp_fp16 = clip_benchmark's --amp on cuda); "
                        "parity with clip_benchmark is exact in fp32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--text-batch-size", type=int, default=1024)
    p.add_argument("--num-workers", type=int, help="image decoding workers (default: min(8, cores))")
    p.add_argument("--cache-dir", help="decode-once cache folder (default: $EVALKIT_CACHE or ~/.cache/evalkit/images)")
    p.add_argument("--no-cache", action="store_true", help="decode into memory only")
    p.add_argument("--shard", type=_shard, help="i/n: this process's share (default: RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS)")
    p.add_argument("--log-samples", action="store_true", help="write per-sample top-5 predictions per unit")
    p.add_argument("--limit", type=_positive, metavar="N",
                   help="evaluate only the first N samples of each task (smoke tests, CI): deterministic, part of "
                        "the task hash, and the rows' `limit` column says so")


def _specs(args: argparse.Namespace):
    from evalkit.grids.selection import model_specs

    return model_specs(args.model, args.pretrained, checkpoints=args.checkpoints, run_dir=args.run_dir,
                       grid=args.grid, family=args.family, where=args.where, epochs=args.epochs)


def cmd_run(args: argparse.Namespace) -> int:
    from evalkit.engine import RunOptions, run
    from evalkit.results.store import collect
    from evalkit.tasks.loader import get_task

    specs = _specs(args)
    tasks = [get_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    opts = RunOptions(**_run_options(args), shard=args.shard)
    counts = run(specs, tasks, opts)
    table = collect(args.out)
    if len(table):
        print(_end_table(args.out, {s.name for s in specs}))
    print(f"units: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already done")
    print(f"table: {os.path.join(args.out, 'results.parquet')} ({len(table)} rows)")
    return 1 if counts["failed"] else 0


def _end_table(out: str, models: set[str]) -> str:
    """The compact checkpoint x task table of this run's checkpoints (main metrics; failures counted)."""
    from evalkit.report.load import load_results
    from evalkit.report.summary import build_view
    from evalkit.report.text import compact_table

    return compact_table(build_view(load_results(out)), models=models)


def _run_options(args: argparse.Namespace) -> dict:
    opts = dict(data_root=args.data_root, out=args.out, device=args.device, precision=args.precision,
                batch_size=args.batch_size, text_batch_size=args.text_batch_size, log_samples=args.log_samples,
                num_workers=args.num_workers, keep_checkpoints=args.keep_checkpoints, limit=args.limit)
    if args.no_cache:
        opts["cache_dir"] = None
    elif args.cache_dir:
        opts["cache_dir"] = args.cache_dir
    return opts


def cmd_submit(args: argparse.Namespace) -> int:
    from evalkit.cluster.submit import SubmitError, submit_shards
    from evalkit.tasks.loader import get_task

    specs = _specs(args)
    tasks = [get_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    slurm = {k: v for k, v in {"slurm_partition": args.partition, "slurm_gpus_per_task": args.gpus_per_shard,
                                "cpus_per_task": args.cpus_per_shard, "timeout_min": args.timeout_min,
                                "slurm_account": args.account}.items() if v is not None}
    folder = args.log_folder or f"{args.out}/slurm"
    options = {**_run_options(args), "gpus_requested": bool(args.gpus_per_shard)}
    try:
        sub = submit_shards(specs, tasks, options, args.shards, folder, cluster=args.cluster, slurm=slurm,
                            cache_first=args.cache_first)
    except SubmitError as e:
        print(f"evalkit submit: error: {e}", file=sys.stderr)
        return 2
    step = f" and a collect step after them (job {sub.collect_job.job_id})" if sub.collect_job is not None else ""
    if sub.cache_jobs:
        print(f"submitted {len(sub.cache_jobs)} cache pieces (job {sub.cache_jobs[0].job_id.split('_')[0]}) first",
              flush=True)
    print(f"submitted {len(sub.jobs)} array tasks (job {sub.array_id}){step}; logs in {folder}", flush=True)
    if not args.wait:
        return 0
    from evalkit.results.store import collect

    outcomes = sub.wait()
    counts = {k: sum(o.counts[k] for o in outcomes if o.finished) for k in ("ok", "failed", "skipped")}
    for o in outcomes:
        if not o.finished:
            print(f"shard {o.index} (job {o.job_id}) did not finish: {o.state}{': ' + o.error if o.error else ''}; "
                  f"its finished units stay in {args.out}/units, and the same command again computes the rest")
    print(f"units: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already done")
    print(f"table: {args.out}/results.parquet ({len(collect(args.out))} rows)")
    return 1 if counts["failed"] or not all(o.finished for o in outcomes) else 0


def cmd_models(args: argparse.Namespace) -> int:
    from evalkit.grids.zoo import read_zoo

    zoo = read_zoo()
    print(f"# zoo: {zoo.get('path', 'checkpoints.yaml (none found)')}")
    for name, e in zoo["models"].items():
        print(f"{name:32s} {e.get('family', ''):7s} {str(e.get('arch', '')):24s} {e.get('weights', '')}")
    for name, e in zoo["grids"].items():
        print(f"grid {name:27s} {e.get('family', ''):7s} {str(e.get('arch', '(params.txt)')):24s} {e.get('glob', '')}")
    if args.archs:
        from evalkit.models.configs import evalkit_config_names

        print("# evalkit architectures: " + ", ".join(evalkit_config_names()))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from evalkit.tasks.loader import all_tasks, suite_members

    tasks = all_tasks()
    for name, t in sorted(tasks.items()):
        if t.type == "suite":
            continue
        print(f"{name:28s} {t.type:24s} dataset={t.dataset} split={t.split} metrics={','.join(t.metrics)} "
              f"main={t.main_metric}")
    for name, t in sorted(tasks.items()):
        if t.type != "suite":
            continue
        t = suite_members(t)
        members, partial = t.options["tasks"], t.options["partial"]
        print(f"{name:28s} suite of {len(members)} (average of their main metrics)"
              + (f"; partial: {len(partial)} more not computed by evalkit yet" if partial else ""))
        for m in partial:
            print(f"{'':30s}not computed: {m}")
    print("wds/NAME                 (any clip_benchmark webdataset folder under --data-root)")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from evalkit.results.store import collect, superseded

    if args.superseded:
        old = superseded(args.out)
        if old.empty:
            print(f"{args.out}: no superseded unit files")
            return 0
        print(old.drop(columns=["unit_file"]).to_string(index=False))
        print(f"{len(old)} superseded unit files (kept on disk, not in the table):")
        for f in old.unit_file:
            print(f"  {f}")
        return 0
    table = collect(args.out)
    print(f"{os.path.join(args.out, 'results.parquet')}: {len(table)} rows")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evalkit.data import cache

    cache_dir = Path(args.cache_dir) if args.cache_dir else cache.default_cache_dir()
    if args.action == "ls":
        for e in cache.list_entries(cache_dir):
            print(f"{e['entry']}  {e['n']:>8d} images  {e['bytes'] / 2**20:9.1f} MiB  {e['source']}")
        return 0
    if args.action == "rm":
        print(f"removed {cache.remove_entries(cache_dir, args.match or '')} entries from {cache_dir}")
        return 0
    from evalkit.cluster.submit import build_cache, pixel_configs
    from evalkit.data.preprocess import PreprocessCfg
    from evalkit.engine import shard_from_env
    from evalkit.tasks.loader import get_task

    tasks = [get_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    if args.model:  # the pixels the engine will ask for with this model (size, interpolation, resize mode)
        from evalkit.grids.selection import model_specs

        cfgs = pixel_configs(model_specs(args.model, args.pretrained, family=args.family))
    else:
        cfgs = [PreprocessCfg(size=args.size)]
    shard = args.shard or shard_from_env()
    build_cache(tasks, args.data_root, cache_dir, cfgs, shard=shard, progress=True, say=print)
    return 0


def add_run_parsers(sub) -> None:
    """`run`, `submit`, `models`, `tasks`, `collect`, `cache`."""
    r = sub.add_parser("run", help="evaluate models or checkpoint grids on tasks")
    _add_run_options(r)
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("submit", help="the same run as a SLURM job array (submitit), one shard per task")
    _add_run_options(s)
    s.add_argument("--shards", type=int, required=True, help="number of array tasks (e.g. one per GPU)")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--gpus-per-shard", type=int)
    s.add_argument("--cpus-per-shard", type=int)
    s.add_argument("--timeout-min", type=int)
    s.add_argument("--log-folder", help="submitit logs (default: OUT/slurm)")
    s.add_argument("--cluster", choices=["slurm", "local", "debug"], help="default: slurm (an error where sbatch is missing); local runs the shards as processes here")
    s.add_argument("--wait", action="store_true", help="wait for every shard and print the table")
    s.add_argument("--cache-first", type=int, default=0, metavar="N",
                   help="first build the decode cache in N array tasks; the evaluation array waits for them (afterok)")
    s.set_defaults(func=cmd_submit)
    m = sub.add_parser("models", help="list the zoo (checkpoints.yaml)")
    m.add_argument("--archs", action="store_true", help="also list evalkit's own architectures")
    m.set_defaults(func=cmd_models)
    sub.add_parser("tasks", help="list the task registry").set_defaults(func=cmd_tasks)
    c = sub.add_parser("collect", help="merge unit files into results.parquet/csv")
    c.add_argument("out", nargs="?", default="results")
    c.add_argument("--superseded", action="store_true",
                   help="list unit files that are not in the table: older results of a changed task or precision")
    c.set_defaults(func=cmd_collect)
    k = sub.add_parser("cache", help="manage the decode-once image cache")
    k.add_argument("action", choices=["build", "ls", "rm"])
    k.add_argument("--tasks", default="", help="build: tasks whose images to cache")
    k.add_argument("--data-root")
    k.add_argument("--size", type=int, default=224)
    k.add_argument("--model", help="build: take size/interpolation/resize mode from this model (as `run --model`) "
                   "instead of --size")
    k.add_argument("--pretrained", help="build: with --model, its pretrained tag (tags can change the preprocessing)")
    k.add_argument("--family", help="build: with --model, force the model family")
    k.add_argument("--shard", type=_shard, help="build: i/n, decode piece i of n (default: RANK/WORLD_SIZE or "
                   "SLURM_PROCID/SLURM_NTASKS); whoever completes the set assembles the entry")
    k.add_argument("--match", help="rm: only entries whose name or source contains this")
    k.add_argument("--cache-dir")
    k.set_defaults(func=cmd_cache)
