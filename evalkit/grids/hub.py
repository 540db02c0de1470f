"""The paper's grid straight from a Hugging Face hub repo: `--grid hf-hub:ORG/REPO[@REVISION]`.

A repo in the layout of `laion/scaling-laws-for-comparison`: `<full_name>/epoch_<k>.pt` per run and the
metadata table `results.parquet` at the root. The file list and the table come from the hub; the specs
are those of the same layout on disk (evalkit/grids/runs.py), with each checkpoint a reference

    hf-hub-file:ORG/REPO[@REVISION]:<full_name>/epoch_<k>.pt

as `pretrained` and so as the table's `checkpoint` column and the units' identity: the same on every
machine, whatever the local cache path (the revision is part of it only when the user named one).

Checkpoints are downloaded just in time: the engine's prefetch thread fetches the next pending
checkpoint (`HubCheckpoints.fetch`, into the HF cache, pinned to the commit the file list was read at)
while the current one computes, and once all units of a checkpoint are written it is deleted from the
cache (`HubCheckpoints.release`: the snapshot link and its blob) unless `--keep-checkpoints`; so the cache
never holds more than two checkpoints of the grid. Finished units are never prefetched, so a rerun
downloads nothing for them.

Offline (`HF_HUB_OFFLINE=1`) nothing is fetched and nothing deleted: the file list is the one an
online run saved in the cache (`<cache>/models--ORG--REPO/evalkit/listing-<revision>.json`), else what
the cached snapshot holds plus the `<full_name>/epoch_1..total_epochs.pt` files results.parquet implies
(download_models.py's rule). Selected checkpoints the cache lacks fail their units with the file named;
no cached results.parquet/file list at all is one error up front. An unreachable hub (online) is one
error, before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import NotFound, UsageError
from evalkit.grids import paper as pg
from evalkit.grids.source import SOURCES, CheckpointSource, Layout, register_layout
from evalkit.models.hub import HubUnavailable
from evalkit.models.source import HF_HUB, HF_HUB_FILE, parse_source
from evalkit.models.spec import ModelSpec

log = logging.getLogger(__name__)

GRID_PREFIX = HF_HUB + ":"
FILE_PREFIX = HF_HUB_FILE + ":"
METADATA_FILE = "results.parquet"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.(?:pt|pth|bin|safetensors)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")


def parse_grid_arg(arg: str) -> tuple[str, str | None]:
    """`hf-hub:ORG/REPO[@REVISION]` -> (repo id, revision or None)."""
    source = parse_source(arg)
    body = source.value if source.kind == HF_HUB else arg
    repo, _, revision = body.partition("@")
    if not _REPO.match(repo) or (body.count("@") and not revision):
        raise UsageError(f"--grid {arg}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION "
                         "(e.g. hf-hub:laion/scaling-laws-for-comparison).")
    return repo, revision or None


def file_ref(repo: str, path: str, revision: str | None = None) -> str:
    return f"{FILE_PREFIX}{repo}{'@' + revision if revision else ''}:{path}"


def parse_file_ref(ref: str) -> tuple[str, str | None, str]:
    """`hf-hub-file:ORG/REPO[@REVISION]:PATH` -> (repo id, revision or None, path in the repo)."""
    source = parse_source(ref)
    head, sep, path = source.value.partition(":")
    repo, _, revision = head.partition("@")
    if source.kind != HF_HUB_FILE or not sep or not path or not _REPO.match(repo):
        raise UsageError(f"{ref}: expected {FILE_PREFIX}ORG/REPO[@REVISION]:PATH")
    return repo, revision or None, path


def is_hub_file(pretrained: str | None) -> bool:
    return bool(pretrained) and parse_source(str(pretrained)).kind == HF_HUB_FILE


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _storage(repo: str) -> Path:
    """The repo's folder in the local HF cache (`models--ORG--REPO`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def _listing_file(repo: str, revision: str | None) -> Path:
    return _storage(repo) / "evalkit" / f"listing-{re.sub(r'[^A-Za-z0-9._-]', '_', revision or 'main')}.json"


# ---------------------------------------------------------------------------------------------
# The repo's file list and metadata table


@dataclass
class HubGrid:
    repo: str
    revision: str | None     # what the user named (None: main)
    commit: str              # the commit the file list was read at; downloads are pinned to it
    files: list[str]
    metadata: Path | None    # the cached results.parquet, if the repo has one
    offline: bool


def open_hub_grid(arg: str) -> HubGrid:
    repo, revision = parse_grid_arg(arg)
    return _open_offline(repo, revision) if _offline() else _open_online(repo, revision)


def _hub_error(repo: str, what: str, e: Exception) -> HubUnavailable:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"hf-hub:{repo}"
    if isinstance(e, RevisionNotFoundError):
        return HubUnavailable(f"{where}: no such revision ({what}).")
    if isinstance(e, (RepositoryNotFoundError, GatedRepoError)):
        return HubUnavailable(f"{where}: no such repo, or it is private or gated (log in with `hf auth login`).")
    first = (str(e).strip().splitlines() or [""])[0]
    return HubUnavailable(
        f"{where}: the hub could not be reached ({what}: {type(e).__name__}: {first}); check the network "
        "(and HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use what the local Hugging Face cache holds.")


def _open_online(repo: str, revision: str | None) -> HubGrid:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    try:  # first, and fast: an unreachable hub fails here, before any retrying download
        commit = api.model_info(repo, revision=revision, expand=["sha"]).sha  # not the 70k-entry siblings list
        if not commit:
            raise HubUnavailable(f"hf-hub:{repo}: the hub gave no commit for revision {revision or 'main'}.")
        files = sorted(api.list_repo_files(repo, revision=commit))
        metadata = Path(hf_hub_download(repo, METADATA_FILE, revision=commit)) if METADATA_FILE in files else None
    except HubUnavailable:
        raise
    except Exception as e:
        raise _hub_error(repo, f"revision {revision or 'main'}", e) from None
    _save_listing(repo, revision, commit, files)
    return HubGrid(repo, revision, commit, files, metadata, offline=False)


def _save_listing(repo: str, revision: str | None, commit: str, files: list[str]) -> None:
    """The file list, for offline runs on this cache (or a copy of it)."""
    path = _listing_file(repo, revision)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"repo": repo, "revision": revision, "commit": commit, "files": files}))
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache: offline runs then fall back to the snapshot (module docstring)
        log.warning("evalkit: warning: could not save the file list of hf-hub:%s in %s (%s)", repo, path, e)


def _open_offline(repo: str, revision: str | None) -> HubGrid:
    storage = _storage(repo)
    listing = _listing_file(repo, revision)
    commit, files = None, None
    if listing.is_file():
        data = json.loads(listing.read_text())
        commit, files = data["commit"], list(data["files"])
    elif revision and _COMMIT.match(revision):
        commit = revision
    elif (storage / "refs" / (revision or "main")).is_file():
        commit = (storage / "refs" / (revision or "main")).read_text().strip()
    snapshot = storage / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        raise HubUnavailable(
            f"hf-hub:{repo}: HF_HUB_OFFLINE is set and the local Hugging Face cache ({storage}) holds no file list "
            f"or {METADATA_FILE} of revision {revision or 'main'}: run once where the hub is reachable (the file "
            "list and results.parquet are kept in the cache) and copy the cache here, or unset HF_HUB_OFFLINE.")
    metadata = snapshot / METADATA_FILE if (snapshot / METADATA_FILE).is_file() else None
    if files is None:  # what the snapshot holds, plus the checkpoints the metadata table implies
        found = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
        if metadata is not None:
            for name, entry in pg.read_metadata(metadata).runs.items():
                last = entry.get("total_epochs") or max(entry.get("epochs") or [0])
                found.update(f"{name}/epoch_{k}.pt" for k in range(1, int(last) + 1))
        files = sorted(found)
        log.warning("evalkit: warning: hf-hub:%s: no file list saved by an online run in %s; taking the cached "
                    "snapshot's files and the epoch_1..total_epochs checkpoints %s lists", repo, listing.parent,
                    METADATA_FILE)
    return HubGrid(repo, revision, commit, files, metadata, offline=True)


def _checkpoints_by_run(grid: HubGrid) -> dict[Path, list[str]]:
    """`<run>/epoch_N.pt` (and `<run>/checkpoints/epoch_N.pt`) references grouped by run folder, epochs in
    order; `epoch_latest` is never a checkpoint of its own."""
    base = Path(f"{GRID_PREFIX}{grid.repo}{'@' + grid.revision if grid.revision else ''}")
    by_run: dict[Path, list[tuple[int, str]]] = {}
    for f in grid.files:
        parts = f.split("/")
        m = _EPOCH_FILE.match(parts[-1])
        if not m or len(parts) < 2:
            continue
        run = parts[:-2] if parts[-2] == "checkpoints" and len(parts) >= 3 else parts[:-1]
        by_run.setdefault(base.joinpath(*run), []).append((int(m.group(1)), file_ref(grid.repo, f, grid.revision)))
    return {run: [ref for _, ref in sorted(refs)] for run, refs in sorted(by_run.items())}


def specs_from_hub(arg: str, model: str | None = None, family: str | None = None, where: Any = None,
                   epochs: Any = None) -> list[ModelSpec]:
    """The specs of every (selected) checkpoint of a hub repo in the paper's layout (module docstring)."""
    from evalkit.grids.runs import specs_for_grid_listing

    grid = open_hub_grid(arg)
    by_run = _checkpoints_by_run(grid)
    if not by_run:
        raise NotFound(
            f"{arg}: no checkpoints in the repo (commit {grid.commit}): expected <full_name>/epoch_N.pt files, as "
            "laion/scaling-laws-for-comparison has them.")
    table = None
    if grid.metadata is not None:
        read = pg.read_metadata(grid.metadata)  # named by its hub address in warnings, not the cache path
        table = pg.MetadataTable(Path(f"{GRID_PREFIX}{grid.repo}/{METADATA_FILE}"), read.runs)
    specs = specs_for_grid_listing(by_run, table, model=model, family=family, where=where, epochs=epochs)
    for s in specs:
        s.extra["hub_commit"] = grid.commit
    if grid.offline:
        _mark_missing(grid, specs)
    return specs


def _mark_missing(grid: HubGrid, specs: list[ModelSpec]) -> None:
    """Offline: a selected checkpoint the cache lacks fails its units, naming the file."""
    missing = []
    for s in specs:
        _, _, path = parse_file_ref(s.pretrained or "")
        if s.error is None and not _cached(grid.repo, path, grid.commit):
            s.error = (f"{s.pretrained}: not in the local Hugging Face cache ({_storage(grid.repo)}) and HF_HUB_OFFLINE "
                       f"is set; fetch it where the hub is reachable (`hf download {grid.repo} {path}`) and copy the "
                       "cache here, or unset HF_HUB_OFFLINE.")
            missing.append(path)
    if missing:
        log.warning("evalkit: warning: hf-hub:%s: %d of the %d selected checkpoints are not in the local Hugging "
                    "Face cache (HF_HUB_OFFLINE is set), their units fail: %s%s", grid.repo, len(missing), len(specs),
                    ", ".join(missing[:5]), ", ..." if len(missing) > 5 else "")


def _cached(repo: str, path: str, commit: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, path, revision=commit)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


# ---------------------------------------------------------------------------------------------
# One checkpoint: download just in time, evict when done

_FETCHED: dict[str, Path] = {}  # reference -> its file in the cache, fetched by this process
_LOCK = threading.Lock()


def fetch_checkpoint(ref: str, commit: str | None = None) -> Path:
    """The local file of a `hf-hub-file:` reference: from the HF cache, downloaded there if missing
    (at `commit` when given, else at the reference's revision, else main). Errors name the file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from evalkit.models.checkpoint import CheckpointError

    with _LOCK:
        known = _FETCHED.get(ref)
    if known is not None and known.is_file():
        return known
    repo, revision, path = parse_file_ref(ref)
    try:
        local = Path(hf_hub_download(repo, path, revision=commit or revision))
    except LocalEntryNotFoundError:
        state = "HF_HUB_OFFLINE is set" if _offline() else "the hub could not be reached"
        raise CheckpointError(f"{ref}: not in the local Hugging Face cache ({_storage(repo)}) and {state}.") from None
    except EntryNotFoundError:
        raise CheckpointError(f"{ref}: no such file in the repo (commit {commit or revision or 'main'}).") from None
    except Exception as e:
        raise CheckpointError(f"{ref}: download failed: {type(e).__name__}: {e}") from None
    with _LOCK:
        _FETCHED[ref] = local
    return local


def evict_checkpoint(spec: ModelSpec) -> None:
    """Delete a hub checkpoint this process fetched from the HF cache: its snapshot link and, unless
    another snapshot file still links to it, its blob. Offline nothing is deleted (nothing could be fetched
    again)."""
    if not is_hub_file(spec.pretrained) or _offline():
        return
    with _LOCK:
        local = _FETCHED.pop(spec.pretrained or "", None)
    if local is None:
        return
    repo, _, _ = parse_file_ref(spec.pretrained or "")
    storage = _storage(repo)
    blob = Path(os.path.realpath(local)) if local.is_symlink() else None
    try:
        # the run's folder stays, even empty: the prefetch (or another shard on this cache) may be downloading
        # the run's next checkpoint into it right now, and huggingface_hub creates the folder only once
        local.unlink(missing_ok=True)
        if blob is not None and blob.parent == storage / "blobs" and not _linked(storage / "snapshots", blob):
            blob.unlink(missing_ok=True)
    except OSError as e:
        log.warning("evalkit: warning: could not delete %s from the Hugging Face cache (%s)", local, e)


def _linked(snapshots: Path, blob: Path) -> bool:
    """Whether any snapshot file still links to `blob` (two checkpoints with identical bytes share one)."""
    for dirpath, _, names in os.walk(snapshots):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.islink(p) and os.path.realpath(p) == str(blob):
                return True
    return False


class HubCheckpoints(CheckpointSource):
    """`hf-hub-file:` checkpoints: downloaded just in time into the HF cache, evicted once evaluated."""

    name = "hf-hub-file"
    priority = 10

    def claims(self, spec: ModelSpec) -> bool:
        return is_hub_file(spec.pretrained)

    def fetch(self, spec: ModelSpec) -> Path:
        return fetch_checkpoint(spec.pretrained or "", spec.extra.get("hub_commit"))

    def release(self, spec: ModelSpec) -> None:
        evict_checkpoint(spec)


SOURCES.register(HubCheckpoints.name, HubCheckpoints())
register_layout(Layout("hf-hub", "grid", lambda value: parse_source(value).kind == HF_HUB, specs_from_hub, priority=10))
