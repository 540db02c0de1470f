"""`evalkit submit`: the same run as a SLURM job array through submitit, one shard per array task.

Each array task runs `engine.run` with `shard=(i, n)` and writes unit files into the shared results
folder; the shards never clash (distinct unit files), and each ends by collecting the table. On
SLURM a last step, `evalkit-collect`, is submitted with `--dependency=afterany` on the whole array:
it runs once every array task has ended, however it ended (a shard cancelled or preempted after
the others finished never collects itself), so the table always holds every unit on disk.

A shard that is cancelled, preempted or killed keeps the units it finished (each is its own file);
submitting the same command again skips them and computes the rest.

Job states come from `sacct` where the cluster keeps accounting; on a cluster without it (no
slurmdbd) `sacct` fails, and submitit would warn on every poll and never see a cancelled shard end.
There the states come from `squeue` instead, and that is said once.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import UserError

try:  # submitit is an optional dependency (evalkit[slurm]); only `submit` needs it
    from submitit.slurm.slurm import SlurmInfoWatcher as _WatcherBase
except ImportError:  # pragma: no cover - without submitit, `submit` says what to install
    _WatcherBase = object  # type: ignore[assignment,misc]


class SubmitError(UserError, RuntimeError):
    """A submission that could not be made; one line for the user."""


def run_shard(index: int, count: int, specs: list, tasks: list, options: dict[str, Any]) -> dict[str, int]:
    """One array task (module-level so submitit can pickle it)."""
    from evalkit.engine import RunOptions, run
    from evalkit.results.store import collect

    opts = RunOptions(**{**options, "shard": (index, count)})
    counts = run(specs, tasks, opts)
    collect(opts.out)
    return counts


def collect_step(out: str) -> int:
    """The final collect, run after every array task has ended; returns the table's row count."""
    from evalkit.results.store import collect

    return len(collect(out))


def pixel_configs(specs: list) -> list:
    """The distinct pixel preprocessings (`PreprocessCfg`, one per `pixel_key`) the engine will ask the
    decode cache for with these models, resolved from their configs without reading any weights.

    As in `load_model`: the config's size, the family's hook, the source's overrides (hub config,
    pretrained tag), the spec's `preprocess:`. The family comes from the name and config only (a family
    told apart by checkpoint keys alone is not seen), so give `--family` for such checkpoints.
    """
    import dataclasses

    from evalkit.models import source as src
    from evalkit.models.factory import _preprocess, _tag_preprocess, resolve_source
    from evalkit.models.family import family_for, get_family
    from evalkit.models.spec import check_preprocess

    seen: dict[str, Any] = {}
    done: set[str] = set()
    for spec in specs:
        if spec.error:
            continue
        tag = spec.pretrained if spec.pretrained and src.parse_source(spec.pretrained).kind == src.NAME else None
        key = repr((spec.model, spec.arch, tag, spec.family, spec.preprocess))
        if key in done:
            continue
        done.add(key)
        # without its weights (a tag or file would be fetched): the tag's preprocessing is read on its own
        name, cfg, pp, _ = resolve_source(dataclasses.replace(spec, pretrained=None))
        if tag and src.parse_source(spec.model).kind == src.NAME:
            pp = _tag_preprocess(name, tag, cfg)
        family = get_family(spec.family) if spec.family else family_for(name, cfg, None)
        spec_pp = check_preprocess(spec.preprocess, spec.name) if spec.preprocess else None
        pre = _preprocess(cfg, pp, family.preprocess(name, cfg), spec_pp)
        seen.setdefault(pre.pixel_key, pre)
    return list(seen.values())


def build_cache(tasks: list, data_root: str | None, cache_dir: str | Path, cfgs: list,
                shard: tuple[int, int] | None = None, progress: bool = False, say=None) -> int:
    """Decode `tasks`' images into the cache for each pixel config: whole, or piece i of n with `shard`
    (the process that completes the set assembles it). Returns how many entries are complete now."""
    from evalkit.data import cache
    from evalkit.data.roots import resolve_root
    from evalkit.tasks.base import open_task

    complete = 0
    for spec in tasks:
        _, source = open_task(spec, resolve_root(spec.dataset, data_root, spec.options.get("default_root")))
        for cfg in cfgs:
            if shard is None:
                arr = cache.decoded_images(source, cfg, Path(cache_dir), progress=progress, required=True)
            else:
                cache.build_piece(source, cfg, Path(cache_dir), shard, progress=progress)
                arr = cache.assemble(source, cfg, Path(cache_dir), progress=progress)
            complete += arr is not None
            if say is not None:
                what = (f"{arr.shape[0]} images cached" if arr is not None
                        else f"piece {shard[0]}/{shard[1]} cached, waiting for the other pieces")
                say(f"{spec.name} at {cfg.pixel_key}: {what} in {cache_dir}")
    return complete


def cache_piece(index: int, count: int, tasks: list, data_root: str | None, cache_dir: str, cfgs: list) -> int:
    """One task of the `--cache-first` array (module-level so submitit can pickle it)."""
    return build_cache(tasks, data_root, cache_dir, cfgs, shard=(index, count))


# states in which a job has not ended: submitit's list, and SUSPENDED (`scontrol suspend`, gang
# scheduling) and the other transient states squeue reports
_RUNNING = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING",
            "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "STOPPED", "SIGNALING", "STAGE_OUT"}
# a job that squeue no longer lists (purged MinJobAge seconds after it ended)
GONE = "ENDED"


class QueueWatcher(_WatcherBase):  # type: ignore[misc,valid-type]
    """submitit's SLURM state watcher, quiet on clusters without accounting.

    Asks `sacct` first; if that fails on the first call (no accounting storage, no slurmdbd), says so
    once and follows the jobs with `squeue --states=all` from then on, where a job squeue no longer
    lists has ended. sacct's own errors never reach the terminal.
    """

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self.use_sacct: bool | None = None  # None: not asked yet
        self.note: str | None = None  # the one line said when falling back to squeue

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        state = self.get_state(job_id, mode=mode).upper().split()
        return bool(state) and state[0] not in _RUNNING

    def _pending_ids(self) -> set[str]:
        return {x.split("_")[0] for x in self._registered - self._finished}

    def update(self) -> None:
        ids = self._pending_ids()
        if not ids:
            return
        self._num_calls += 1
        info = None
        if self.use_sacct is not False:
            info = self._sacct(ids)
        if info is None:
            info = self._squeue(ids)
        if info is not None:
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def _sacct(self, ids: set[str]) -> dict[str, dict[str, str]] | None:
        cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"] + [a for j in sorted(ids) for a in ("-j", j)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            r = subprocess.CompletedProcess(cmd, 1, "", str(e))
        if r.returncode == 0:
            self.use_sacct = True
            return self.read_info(r.stdout)
        if self.use_sacct is None:  # the first call failed: this cluster has no usable accounting
            self.use_sacct = False
            why = " ".join((r.stderr or r.stdout or f"exit status {r.returncode}").split()) or "no reason given"
            self.note = (f"evalkit: note: sacct is unusable on this cluster ({why}); following the jobs "
                         "with squeue instead")
            print(self.note, file=sys.stderr, flush=True)
        return None  # a transient failure after sacct worked: squeue for this round

    def _squeue(self, ids: set[str]) -> dict[str, dict[str, str]] | None:
        cmd = ["squeue", "--noheader", "--array", "--states=all", "--user", getpass.getuser(),
               "--format=%i|%T|%N"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0:  # the controller did not answer: keep what we knew
            return None
        lines = [ln for ln in r.stdout.splitlines() if ln.split("_")[0].split("|")[0] in ids]
        info = self.read_info("\n".join(["JobID|State|NodeList", *lines]))
        for job_id in self._registered - self._finished:
            if job_id.split("_")[0] in ids and job_id not in info:
                info[job_id] = {"JobID": job_id, "State": GONE, "NodeList": ""}
        return info


_WATCHER: QueueWatcher | None = None


def watcher() -> QueueWatcher:
    """One watcher for every job this process follows (one squeue/sacct call covers them all)."""
    global _WATCHER
    if _WATCHER is None:
        _WATCHER = QueueWatcher(delay_s=15)
    return _WATCHER


@dataclass
class ShardOutcome:
    index: int
    job_id: str
    counts: dict[str, int] | None = None  # run()'s counts when the shard finished
    state: str = ""  # the scheduler's last state, when it did not
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.counts is not None


@dataclass
class Submission:
    jobs: list  # the array tasks (submitit jobs), one per shard
    collect_job: Any = None  # the afterany collect step (SLURM only)
    cache_jobs: list = field(default_factory=list)  # the --cache-first pieces the array waits for (afterok)
    outcomes: list[ShardOutcome] = field(default_factory=list)  # filled by wait()

    @property
    def array_id(self) -> str:
        return self.jobs[0].job_id.split("_")[0] if self.jobs else "-"

    def wait(self) -> list[ShardOutcome]:
        """Wait until every array task (and the collect step) has ended, however it ended."""
        for job in self.jobs:
            job.wait()
        if self.collect_job is not None:
            self.collect_job.wait()
        self.outcomes = [_outcome(i, job) for i, job in enumerate(self.jobs)]
        return self.outcomes


def _outcome(index: int, job: Any) -> ShardOutcome:
    out = ShardOutcome(index, job.job_id)
    if not job.paths.result_pickle.exists():  # killed, cancelled, preempted, timed out, or never started
        out.state = job.state
        return out
    try:
        out.counts = job.result()
    except Exception as e:  # the shard raised: submitit re-raises it here
        out.state = "FAILED"
        out.error = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    return out


def _sbatch_message(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _check_cluster(cluster: str | None) -> str:
    if cluster in (None, "slurm") and shutil.which("sbatch") is None:
        raise SubmitError("no SLURM on this machine (sbatch is not on PATH): run `evalkit submit` on a SLURM "
                          "login node, or pass --cluster local to run the shards as processes on this machine")
    return cluster or "slurm"


def _cancel(job_id: str) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


def _remove_new_files(folder: Path, existing: set[Path], made: list[Path]) -> None:
    """What a refused submission left in the log folder (submitit's pickles and script)."""
    if folder.is_dir():
        for p in set(folder.iterdir()) - existing:
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    for d in made:  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


def submit_shards(specs: list, tasks: list, options: dict[str, Any], shards: int, folder: str | Path,
                  cluster: str | None = None, slurm: dict[str, Any] | None = None,
                  wait: bool = False, cache_first: int = 0) -> Submission:
    """Submit `shards` array tasks and, on SLURM, the afterany collect step.

    With `cache_first=N`, an array of N decode-cache pieces (`evalkit cache build --shard i/N` for the
    tasks and every pixel config of the models) goes first, and the evaluation array waits for it
    (`afterok`; on a local cluster, the pieces are waited for here before the array is submitted).

    Either all of it is submitted or nothing is: a refused array raises `SubmitError` with sbatch's
    message; a refused collect step (or evaluation array after the cache pieces) cancels what went before.
    """
    try:
        import submitit
        from submitit.core.utils import FailedJobError
    except ImportError:
        raise SubmitError("evalkit submit needs submitit: pip install 'evalkit[slurm]' (or submitit)") from None

    cluster = _check_cluster(cluster)
    slurm = dict(slurm or {})
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # folders submitit will create
    existing = set(folder.iterdir()) if folder.is_dir() else set()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": 240, "slurm_array_parallelism": shards, "name": "evalkit"}
    params.update(slurm)
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    cache_jobs: list = []
    if cache_first:
        cache_jobs = _submit_cache_first(executor, cache_first, specs, tasks, options, folder, existing, made)
        if executor.cluster == "slurm":
            extra = {**params.get("slurm_additional_parameters", {}),
                     "dependency": f"afterok:{cache_jobs[0].job_id.split('_')[0]}"}
            executor.update_parameters(slurm_additional_parameters=extra)
        else:  # no scheduler to hold the array back: the pieces end first, here
            try:
                for job in cache_jobs:
                    job.result()
            except Exception as e:
                raise SubmitError(f"--cache-first: a cache piece failed: {str(e).strip().splitlines()[-1:]}") from None
        slurm_only = {"slurm_array_parallelism": shards} if executor.cluster == "slurm" else {}
        executor.update_parameters(name=params["name"], **slurm_only)
    args = (list(range(shards)), [shards] * shards, [specs] * shards, [tasks] * shards, [options] * shards)
    # submitit prints sbatch's stderr itself before raising it: keep it for the one error line
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            jobs = executor.map_array(run_shard, *args)
        except FailedJobError as e:
            if cache_jobs and executor.cluster == "slurm":
                _cancel(cache_jobs[0].job_id.split("_")[0])
            _remove_new_files(folder, existing, made)
            raise SubmitError(f"sbatch refused the job array: {_sbatch_message(e)}") from None
    sub = Submission(jobs, cache_jobs=cache_jobs)
    if executor.cluster == "slurm":
        for job in jobs:
            job.watcher = watcher()
        step = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        keep = ("slurm_partition", "slurm_account", "slurm_qos")
        step.update_parameters(name="evalkit-collect", timeout_min=30, cpus_per_task=1,
                               slurm_additional_parameters={"dependency": f"afterany:{sub.array_id}"},
                               **{k: v for k, v in slurm.items() if k in keep})
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                sub.collect_job = step.submit(collect_step, str(options.get("out", "results")))
            except FailedJobError as e:
                _cancel(sub.array_id)
                raise SubmitError(f"sbatch refused the collect step: {_sbatch_message(e)}; the job array "
                                  f"{sub.array_id} was cancelled, nothing is left submitted") from None
        sub.collect_job.watcher = watcher()
    if wait:
        sub.wait()
    return sub


def _submit_cache_first(executor: Any, pieces: int, specs: list, tasks: list, options: dict[str, Any],
                        folder: Path, existing: set[Path], made: list[Path]) -> list:
    """The `--cache-first` array: piece i of `pieces` of every (task, pixel config) entry, on CPUs."""
    from submitit.core.utils import FailedJobError

    cache_dir = options.get("cache_dir", "unset")
    if cache_dir is None:
        raise SubmitError("--cache-first builds the decode cache, which --no-cache turns off")
    if cache_dir == "unset":
        from evalkit.data.cache import default_cache_dir

        cache_dir = default_cache_dir()
    try:
        cfgs = pixel_configs(specs)
    except Exception as e:
        raise SubmitError(f"--cache-first: cannot resolve the models' preprocessing: {e}") from None
    slurm_only = {"slurm_array_parallelism": pieces} if executor.cluster == "slurm" else {}
    executor.update_parameters(name="evalkit-cache", **slurm_only)
    n = pieces
    args = (list(range(n)), [n] * n, [tasks] * n, [options.get("data_root")] * n, [str(cache_dir)] * n, [cfgs] * n)
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return executor.map_array(cache_piece, *args)
        except FailedJobError as e:
            _remove_new_files(folder, existing, made)
            raise SubmitError(f"sbatch refused the --cache-first array: {_sbatch_message(e)}") from None


def submit(specs: list, tasks: list, options: dict[str, Any], shards: int, folder: str | Path,
           cluster: str | None = None, slurm: dict[str, Any] | None = None, wait: bool = False) -> list:
    """Submit `shards` array tasks; return the submitit jobs (waiting for all of them if `wait`)."""
    return submit_shards(specs, tasks, options, shards, folder, cluster=cluster, slurm=slurm, wait=wait).jobs
