"""Results a user can trust: a changed task is a new result, old ones never mix into the table or a
fit, a full disk loses nothing, precision is part of a result, and nothing fails silently."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest
from _embedded import DATA, trained_checkpoint

from evalkit.cli import main
from evalkit.engine import RunOptions, run
from evalkit.errors import UsageError
from evalkit.fit.table import TableError, load_points
from evalkit.models.spec import ModelSpec
from evalkit.results.store import UnitStore, collect, superseded
from evalkit.tasks.loader import get_task


@pytest.fixture(scope="module")
def ckpt():
    path, config = trained_checkpoint("tinyclip-S_s2k")
    return ModelSpec(model=str(config), pretrained=str(path), name="tinyclip-S", samples_seen=2000.0)


@pytest.fixture
def wds(tmp_path):
    """A private copy of the embedded wds classification folder, free to edit."""
    root = tmp_path / "wds_shapes"
    shutil.copytree(DATA / "wds_shapes", root)
    return root


def _run(spec, tasks, out, root, **kw):
    opts = RunOptions(out=out, data_root=str(root), device="cpu", cache_dir=out.parent / "cache", **kw)
    counts = run([spec] if isinstance(spec, ModelSpec) else spec, [get_task(t) for t in tasks], opts)
    return counts, collect(out)


def test_edited_classnames_are_a_new_result_not_a_resume(ckpt, wds, tmp_path):
    out = tmp_path / "out"
    counts, first = _run(ckpt, ["wds/wds_shapes"], out, wds)
    assert counts["ok"] == 1
    acc_before = first.set_index("metric").value["acc1"]
    hash_before = first.task_hash.unique().tolist()
    # the resolved config behind the hash is stored once, with the classnames actually used
    stored = json.loads((out / "tasks" / f"{hash_before[0]}.json").read_text())
    names = (wds / "classnames.txt").read_text().split("\n")
    assert stored["classnames"] == [n for n in names if n] and stored["data"]["n_images"] > 0

    # swap the first two class names: the same images, a different (wrong) task
    lines = [n for n in names if n]
    lines[0], lines[1] = lines[1], lines[0]
    (wds / "classnames.txt").write_text("\n".join(lines) + "\n")
    counts, second = _run(ckpt, ["wds/wds_shapes"], out, wds)
    assert counts == {"ok": 1, "failed": 0, "skipped": 0}, "an edited class list must be computed again"
    assert second.task_hash.nunique() == 1 and second.task_hash.iloc[0] != hash_before[0]
    assert (out / "tasks" / f"{second.task_hash.iloc[0]}.json").is_file()
    acc_after = second.set_index("metric").value["acc1"]
    assert acc_after < acc_before  # swapped labels score worse: the number really was recomputed
    # the table holds the current result only; the old unit file stays on disk and is listed
    assert len(second) == 3 and set(second.metric) == {"acc1", "acc5", "mean_per_class_recall"}
    old = superseded(out)
    assert len(old) == 1 and old.task_hash.iloc[0] == hash_before[0]
    assert old.current_task_hash.iloc[0] == second.task_hash.iloc[0]
    assert len(list((out / "units").glob("*.json"))) == 2


def test_changed_data_files_change_the_hash(ckpt, wds, tmp_path):
    out = tmp_path / "out"
    _run(ckpt, ["wds/wds_shapes"], out, wds)
    tar = sorted((wds / "test").glob("*.tar"))[-1]
    shutil.copy(tar, tmp_path / "keep.tar")
    (wds / "test" / "nshards.txt").write_text("1\n")  # one shard fewer: other data
    tar.unlink()
    counts, table = _run(ckpt, ["wds/wds_shapes"], out, wds)
    assert counts["ok"] == 1 and counts["skipped"] == 0
    assert table.n_samples.iloc[0] < 1000 and len(superseded(out)) == 1


def test_the_same_data_moved_elsewhere_resumes(ckpt, wds, tmp_path):
    """The data's identity is its files relative to the folder: a staged copy is the same task."""
    out = tmp_path / "out"
    _run(ckpt, ["wds/wds_shapes"], out, wds)
    moved = tmp_path / "elsewhere" / "wds_shapes"
    shutil.copytree(wds, moved, copy_function=shutil.copy2)
    counts, _ = _run(ckpt, ["wds/wds_shapes"], out, moved)
    assert counts == {"ok": 0, "failed": 0, "skipped": 1}


def test_ok_and_failed_rows_carry_the_resolved_hash(ckpt, wds, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"truncated")
    broken = ModelSpec(model=ckpt.model, pretrained=str(bad), name="broken")
    counts, table = _run([ckpt, broken], ["wds/wds_shapes"], tmp_path / "out", wds)
    assert counts == {"ok": 1, "failed": 1, "skipped": 0}
    assert table.task_hash.nunique() == 1
    resolved = json.loads(next((tmp_path / "out" / "tasks").glob("*.json")).read_text())
    assert table.task_hash.iloc[0] == resolved["task_hash"] and "data" in resolved


def _record_image_tower_dtypes(monkeypatch) -> list:
    """Every model the engine loads gets forward hooks on the Linear layers of its image tower; the
    dtypes of their outputs are appended to the returned list."""
    import torch

    from evalkit.engine import loop

    seen: list = []
    hooked: set[int] = set()
    load = loop.load_model

    def load_and_hook(*a, **kw):
        lm = load(*a, **kw)
        linears = [m for m in lm.model.visual.modules() if isinstance(m, torch.nn.Linear)]
        assert linears, "the image tower has no Linear layer to observe"
        if id(lm.model) not in hooked:
            hooked.add(id(lm.model))
            for m in linears:
                m.register_forward_hook(lambda mod, inp, output: seen.append(output.dtype))
        return lm

    monkeypatch.setattr(loop, "load_model", load_and_hook)
    return seen


def test_precision_is_part_of_a_result(ckpt, wds, tmp_path, monkeypatch):
    import torch

    seen = _record_image_tower_dtypes(monkeypatch)
    out = tmp_path / "out"
    values = {}
    for precision, dtype in (("fp32", torch.float32), ("amp_bf16", torch.bfloat16), ("amp_fp16", torch.float16)):
        seen.clear()
        counts, table = _run(ckpt, ["wds/wds_shapes"], out, wds, precision=precision)
        assert counts["ok"] == 1, f"{precision} must be computed, not taken from another precision"
        assert list(table.precision.unique()) == [precision] and len(table) == 3
        # autocast really ran: the image tower computed in the asked-for dtype, and only in it
        assert seen and set(seen) == {dtype}, f"{precision}: image tower ran in {set(seen)}, not {dtype}"
        values[precision] = table.set_index("metric").value
    # ... and stays close to fp32 on a trained model
    for p in ("amp_bf16", "amp_fp16"):
        assert (values[p] - values["fp32"]).abs().max() < 0.05
    assert len(superseded(out)) == 2
    # asking for fp32 again: nothing to compute, and the fp32 result is current again
    counts, table = _run(ckpt, ["wds/wds_shapes"], out, wds, precision="fp32")
    assert counts == {"ok": 0, "failed": 0, "skipped": 1}
    assert list(table.precision.unique()) == ["fp32"]
    pd.testing.assert_series_equal(table.set_index("metric").value, values["fp32"])


def test_autocast_dtypes_on_cpu():
    import torch

    from evalkit.engine.device import autocast_for

    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    for precision, dtype in (("fp32", torch.float32), ("amp_bf16", torch.bfloat16), ("amp_fp16", torch.float16)):
        with autocast_for(torch.device("cpu"), precision)():
            assert (x @ w).dtype == dtype
    with pytest.raises(UsageError, match="amp_fp16"):
        autocast_for(torch.device("cpu"), "fp16")


def _two_hash_table(tmp_path, ckpt, wds):
    out = tmp_path / "out"
    _, first = _run(ckpt, ["wds/wds_shapes"], out, wds)
    (wds / "classnames.txt").write_text((wds / "classnames.txt").read_text().replace("circle", "round thing"))
    _, second = _run(ckpt, ["wds/wds_shapes"], out, wds)
    return out, first, second


def test_fit_refuses_two_results_of_one_checkpoint(ckpt, wds, tmp_path):
    out, first, second = _two_hash_table(tmp_path, ckpt, wds)
    assert first.task_hash.iloc[0] != second.task_hash.iloc[0]
    # the collected table is clean: one hash per (checkpoint, task)
    pts = load_points(out / "results.parquet", task="wds/wds_shapes", metric="acc1", x="samples_seen")
    assert len(pts) == 1
    # a hand-merged table mixing both is refused, naming the two hashes
    merged = pd.concat([first, second])
    with pytest.raises(TableError) as e:
        load_points(merged, task="wds/wds_shapes", metric="acc1", x="samples_seen")
    assert first.task_hash.iloc[0] in str(e.value) and second.task_hash.iloc[0] in str(e.value)


def test_fit_matches_the_task_exactly(ckpt, tmp_path):
    rows = []
    for task, v in (("ade20k", 0.2), ("ade20k@zero-shot", 0.05)):
        rows.append({"model": "m", "checkpoint": "c", "task": task, "dataset": "ade20k", "metric": "miou",
                     "value": v, "gflops_total": 1e9, "samples_seen": 1e6, "status": "ok", "task_hash": task,
                     "precision": "fp32"})
    pts = load_points(pd.DataFrame(rows), task="ade20k", metric="miou", x="gflops_total")
    assert len(pts) == 1 and float(pts.y.iloc[0]) == pytest.approx(1 - 0.2)  # error = 1 - miou


def test_collect_superseded_cli(ckpt, wds, tmp_path, capsys):
    out, first, _ = _two_hash_table(tmp_path, ckpt, wds)
    capsys.readouterr()
    assert main(["collect", str(out), "--superseded"]) == 0
    text = capsys.readouterr().out
    assert first.task_hash.iloc[0] in text and "1 superseded unit files" in text


def test_full_disk_is_one_line_and_keeps_units(ckpt, wds, tmp_path, capsys):
    out = tmp_path / "out"
    _run(ckpt, ["wds/wds_shapes"], out, wds)
    units = sorted((out / "units").glob("*.json"))
    before = [u.read_bytes() for u in units]
    (out / "results.parquet").unlink()
    (out / "results.parquet").mkdir()  # the table's path cannot be replaced: a real OSError from the write
    (out / "results.parquet" / "x").write_text("")
    capsys.readouterr()
    rc = main(["collect", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "results.parquet" in err and f"evalkit collect {out}" in err
    assert "intact" in err
    assert [u.read_bytes() for u in units] == before
    assert not list(out.glob(".tmp*")), "no temp file left behind"


def test_full_disk_simulated_enospc(ckpt, wds, tmp_path, monkeypatch):
    import errno

    from evalkit.results import store as results_mod
    out = tmp_path / "out"
    _run(ckpt, ["wds/wds_shapes"], out, wds)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(results_mod.ResultsWriteError, match="No space left on device"):
        collect(out)
    assert UnitStore(out).done()


def test_unreadable_unit_file_is_named(ckpt, wds, tmp_path, caplog):
    out = tmp_path / "out"
    _run(ckpt, ["wds/wds_shapes"], out, wds)
    victim = next((out / "units").glob("*.json"))
    victim.write_text('{"unit_id": "x", "rows": [')  # cut short
    with caplog.at_level(logging.WARNING):
        table = collect(out)
    assert table.empty
    assert str(victim) in caplog.text and "unreadable unit file" in caplog.text
    # and the next run computes it again
    counts, table = _run(ckpt, ["wds/wds_shapes"], out, wds)
    assert counts["ok"] == 1 and len(table) == 3


def test_flops_failure_warns(ckpt, wds, tmp_path, monkeypatch, caplog):
    from evalkit.engine import loop
    from evalkit.progress import WARNINGS

    def boom(lm):
        raise RuntimeError("profiler exploded")

    monkeypatch.setattr(loop, "gflops_per_sample", boom)
    WARNINGS.reset()  # said once per architecture and process
    with caplog.at_level(logging.WARNING):
        _, table = _run(ckpt, ["wds/wds_shapes"], tmp_path / "out", wds)
    assert table.gflops_total.isna().all()
    assert "cannot count FLOPs" in caplog.text and "profiler exploded" in caplog.text
    assert ckpt.pretrained in caplog.text


def test_run_removes_temp_folders_of_dead_writers(ckpt, wds, tmp_path):
    """A writer killed mid-write leaves `.tmp-<host>-<pid>-<rand>/`; the next run clears it, while a
    live writer's temp folder (this process) is left alone."""
    import os
    import subprocess

    from evalkit.atomic import temp_dir_name

    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()
    live_name = temp_dir_name()  # ours: alive
    dead_name = live_name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    for name in (live_name, dead_name):
        (out / "units" / name).mkdir(parents=True)
        (out / "units" / name / "half.json").write_text("{")
    _run(ckpt, ["wds/wds_shapes"], out, wds)
    assert (out / "units" / live_name).is_dir() and not (out / "units" / dead_name).exists()
