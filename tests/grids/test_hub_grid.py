"""`--grid hf-hub:ORG/REPO` end to end against a hub-shaped repo served on 127.0.0.1 (tests/_hub_server.py):
file list and results.parquet from the hub, checkpoints downloaded just in time with one prefetched,
evicted once evaluated (never more than two in the HF cache), a rerun downloading nothing, offline runs
on what the cache holds naming what it lacks, and an unreachable hub as one line with nothing written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from _hub_server import HubServer
from _util import REPO, TINY_S, save_training_checkpoint, tiny_clip

from evalkit.errors import UsageError
from evalkit.grids import hub as hub_grid

HUB_TAIL = "_globalbs64_lr0.001_b1_0.9_b2_0.95_sched_cosine_warmup10_gpus1"
RUN_A = "clip_tinyclip-S_s2K_embedded" + HUB_TAIL
RUN_B = "clip_tinyclip-S_s4K_embedded" + HUB_TAIL
HUB_REPO = "org/scaling-grid"
CHECKPOINTS = [f"{run}/epoch_{e}.pt" for run in (RUN_A, RUN_B) for e in (1, 2)]
IDENTITY = ["model", "epoch", "samples_seen", "namespace", "model_simple", "pretrain_dataset", "lr_scheduler",
            "samples_seen_scale_pretty", "total_epochs", "global_batch_size", "run", "gflops_total", "metric", "value"]


def _metadata_rows() -> list[dict]:
    """The repo's results.parquet: one row per (full_name, epoch, downstream_dataset); the table says lr
    schedule const for RUN_B (its name says cosine: the table wins)."""
    rows = []
    for run, scale, sched in ((RUN_A, "2K", "cosine"), (RUN_B, "4K", "const")):
        for e in (1, 2):
            for ds in ("imagenet1k", "mscoco"):
                rows.append({"full_name": run, "namespace": "clip", "model_simple": "tinyclip-S",
                             "pretrain_dataset": "embedded", "lr_scheduler": sched,
                             "samples_seen_scale_pretty": scale, "epoch": e, "total_epochs": 2,
                             "downstream_dataset": ds, "acc1": 0.1 * e})
    return rows


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    """The repo as the hub holds it: <full_name>/epoch_K.pt (each a different tiny CLIP) + results.parquet."""
    root = tmp_path_factory.mktemp("hub") / "repo"
    for i, rel in enumerate(CHECKPOINTS):
        save_training_checkpoint(tiny_clip(TINY_S, seed=i), root / rel, epoch=int(rel[-4]))
    (root / "README.md").write_text("a hub-shaped repo for tests\n")
    pd.DataFrame(_metadata_rows()).to_parquet(root / "results.parquet", index=False)
    return root


def _env(hf_home: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5",
               PYTHONPATH=str(REPO))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _evalkit(env: dict[str, str], out: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evalkit.cli", "run", "--grid", f"hf-hub:{HUB_REPO}", "--tasks", "shapes",
           "--device", "cpu", "--num-workers", "0", "--out", str(out), "--cache-dir", str(cache), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)


def _blobs(hf_home: Path, exclude: set[str]) -> list[str]:
    """Checkpoint blobs in the HF cache (complete or being downloaded), i.e. what the grid holds on disk.

    Blobs are named by their hash (sha256 for LFS files, git's sha1 otherwise); huggingface_hub also
    touches an empty `tmp_<uuid>` there for an instant (its umask probe when a download completes),
    which holds no checkpoint and is not counted."""
    d = hf_home / "hub" / f"models--{HUB_REPO.replace('/', '--')}" / "blobs"
    try:
        # one entry per blob: `<sha>.incomplete` renamed to `<sha>` may be listed under both names at once
        names = {n.split(".")[0] for n in os.listdir(d)}
    except FileNotFoundError:
        return []
    return sorted(n for n in names - exclude if re.fullmatch(r"[0-9a-f]{40}(?:[0-9a-f]{24})?", n))


def _snapshot_checkpoints(hf_home: Path) -> list[str]:
    snaps = hf_home / "hub" / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots"
    return sorted(p.relative_to(next(snaps.iterdir())).as_posix() for p in snaps.rglob("epoch_*.pt"))


class _Poll:
    """The most checkpoint blobs seen in the cache at once, polled every few ms while a run goes."""

    def __init__(self, hf_home: Path, exclude: set[str]):
        self.hf_home, self.exclude, self.most, self._stop = hf_home, exclude, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(_blobs(self.hf_home, self.exclude)))
            time.sleep(0.003)

    def __enter__(self) -> _Poll:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


@pytest.mark.slow  # > 20 s here; `make test-slow` runs it (and .ci/run)
def test_hub_grid_end_to_end(hub_folder, tmp_path):
    from evalkit.cli import main

    hf_home, cache = tmp_path / "hf", tmp_path / "images"
    # the same files evaluated from a local download_models.py folder, in this process (which also decodes
    # the images once into the cache the hub runs below then read)
    local = tmp_path / "download"
    for rel in CHECKPOINTS:
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(hub_folder / rel, local / rel)
    (local / "cache").mkdir()
    shutil.copy(hub_folder / "results.parquet", local / "cache" / "results.parquet")
    assert main(["run", "--run-dir", str(local), "--tasks", "shapes", "--device", "cpu", "--num-workers", "0",
                 "--out", str(tmp_path / "local_out"), "--cache-dir", str(cache)]) == 0

    parquet_blob = HubServer.sha256(hub_folder / "results.parquet")
    with HubServer(hub_folder, HUB_REPO) as hub:
        env = _env(hf_home, hub.url)

        # 1. the grid from the hub: every checkpoint downloaded once, at most two on disk, none after
        out = tmp_path / "out"
        with _Poll(hf_home, {parquet_blob}) as poll:
            r = _evalkit(env, out, cache=cache)
        assert r.returncode == 0, r.stderr
        assert "units: 4 ok, 0 failed, 0 already done" in r.stdout
        assert hub.count("GET", "/results.parquet") == 1 and hub.count("GET", "/tree/" + hub.commit) >= 2  # paginated
        for rel in CHECKPOINTS:
            assert hub.count("GET", f"/resolve/{hub.commit}/{rel}") == 1, rel
        assert poll.most == 2, poll.most  # the next one prefetched while the current computes, never a third
        assert _blobs(hf_home, {parquet_blob}) == [] and _snapshot_checkpoints(hf_home) == []
        table = _table(out)
        main_rows = table[table.metric == "acc1"].set_index("model")
        assert sorted(main_rows.index) == sorted(rel[:-3] for rel in CHECKPOINTS)
        assert set(main_rows.status) == {"ok"}
        b1 = main_rows.loc[f"{RUN_B}/epoch_1"]
        assert b1.checkpoint == f"hf-hub-file:{HUB_REPO}:{RUN_B}/epoch_1.pt"  # identity, not a cache path
        assert (b1.lr_scheduler, b1.samples_seen, b1.total_epochs, b1.arch) == ("const", 2000, 2, "tinyclip-S")
        ours = table[IDENTITY].sort_values(["model", "metric"]).reset_index(drop=True)
        theirs = _table(tmp_path / "local_out")[IDENTITY].sort_values(["model", "metric"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(ours, theirs)

        # 2. a rerun: everything finished, no checkpoint downloaded (not even asked for)
        hub.clear()
        r = _evalkit(env, out, cache=cache)
        assert r.returncode == 0, r.stderr
        assert "units: 0 ok, 0 failed, 4 already done" in r.stdout
        assert hub.count(suffix=".pt") == 0

        # 3. --keep-checkpoints (with --where/--epochs on a hub grid): the evaluated checkpoint stays cached
        r = _evalkit(env, tmp_path / "out_keep", "--keep-checkpoints", "--epochs", "2", "--where", f"run={RUN_A}",
                     cache=cache)
        assert r.returncode == 0, r.stderr
        assert "units: 1 ok" in r.stdout
        assert _snapshot_checkpoints(hf_home) == [f"{RUN_A}/epoch_2.pt"]

        # 4. offline: the cached checkpoint is evaluated, the other fails naming the missing file; the hub is
        # not asked anything, and nothing is deleted from the cache
        hub.clear()
        r = _evalkit(_env(hf_home, hub.url, offline=True), tmp_path / "out_offline", "--where", f"run={RUN_A}",
                     cache=cache)
        assert r.returncode == 1, r.stderr
        assert "units: 1 ok, 1 failed" in r.stdout
        assert hub.requests == []
        assert "1 of the 2 selected checkpoints are not in the local Hugging Face cache" in r.stderr
        offline = _table(tmp_path / "out_offline")
        offline = offline[offline.metric.isin(["acc1", "error"])].set_index("model")
        assert offline.loc[f"{RUN_A}/epoch_2"].status == "ok"
        assert offline.loc[f"{RUN_A}/epoch_2"].value == main_rows.loc[f"{RUN_A}/epoch_2"].value
        err = offline.loc[f"{RUN_A}/epoch_1"].error
        assert offline.loc[f"{RUN_A}/epoch_1"].status == "failed"
        assert f"hf-hub-file:{HUB_REPO}:{RUN_A}/epoch_1.pt" in err and "HF_HUB_OFFLINE" in err
        assert _snapshot_checkpoints(hf_home) == [f"{RUN_A}/epoch_2.pt"]


def test_unreachable_hub_is_one_line_and_writes_nothing(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "out"
    t0 = time.time()
    r = _evalkit(_env(tmp_path / "hf", closed), out, cache=tmp_path / "images")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith("evalkit: error: hf-hub:org/scaling-grid: the hub could not be reached") \
        and "HF_HUB_OFFLINE=1" in err[0]
    assert time.time() - t0 < 60  # fails at the first request, no download retries
    assert not out.exists()
    # offline with nothing cached: one line up front, naming the cache
    r = _evalkit(_env(tmp_path / "hf", closed, offline=True), out, cache=tmp_path / "images")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "HF_HUB_OFFLINE is set" in err[0] and "models--org--scaling-grid" in err[0]
    assert not out.exists()


def test_offline_without_a_saved_file_list_uses_the_snapshot_and_the_table(hub_folder, tmp_path, monkeypatch, caplog):
    """A cache filled by other means (`hf download ORG/REPO results.parquet RUN/epoch_2.pt`): no file list
    saved by an online evalkit run, so the checkpoints are the snapshot's plus the epoch_1..total_epochs
    ones results.parquet implies (download_models.py's rule); those not cached fail, naming the file."""
    import logging

    from huggingface_hub import constants

    commit = "f" * 40
    storage = tmp_path / "hub" / f"models--{HUB_REPO.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    (snapshot / RUN_A).mkdir(parents=True)
    shutil.copy(hub_folder / "results.parquet", snapshot / "results.parquet")
    os.link(hub_folder / RUN_A / "epoch_2.pt", snapshot / RUN_A / "epoch_2.pt")
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.WARNING):
        specs = {s.name: s for s in hub_grid.specs_from_hub(f"hf-hub:{HUB_REPO}", where="lr_scheduler=cosine|const")}
    assert sorted(specs) == sorted(rel[:-3] for rel in CHECKPOINTS)
    assert specs[f"{RUN_A}/epoch_2"].error is None
    assert specs[f"{RUN_A}/epoch_2"].extra["hub_commit"] == commit
    for name in (f"{RUN_A}/epoch_1", f"{RUN_B}/epoch_1", f"{RUN_B}/epoch_2"):
        assert f"hf-hub-file:{HUB_REPO}:{name}.pt: not in the local Hugging Face cache" in specs[name].error
    assert "no file list saved by an online run" in caplog.text and "3 of the 4 selected checkpoints" in caplog.text
    assert hub_grid.fetch_checkpoint(f"hf-hub-file:{HUB_REPO}:{RUN_A}/epoch_2.pt", commit) == \
        snapshot / RUN_A / "epoch_2.pt"


def test_references_and_bad_grid_arguments():
    assert hub_grid.parse_grid_arg("hf-hub:laion/scaling-laws-for-comparison") == \
        ("laion/scaling-laws-for-comparison", None)
    assert hub_grid.parse_grid_arg("hf-hub:org/repo@v1.0") == ("org/repo", "v1.0")
    ref = hub_grid.file_ref("org/repo", "run/epoch_3.pt", "v1.0")
    assert ref == "hf-hub-file:org/repo@v1.0:run/epoch_3.pt"
    assert hub_grid.parse_file_ref(ref) == ("org/repo", "v1.0", "run/epoch_3.pt")
    assert hub_grid.parse_file_ref("hf-hub-file:org/repo:a/epoch_1.pt") == ("org/repo", None, "a/epoch_1.pt")
    for bad in ("hf-hub:repo-without-org", "hf-hub:org/repo@", "hf-hub:a/b/c"):
        with pytest.raises(UsageError, match="expected hf-hub:ORG/REPO"):
            hub_grid.parse_grid_arg(bad)
