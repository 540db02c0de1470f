"""Units are written whole, reruns skip finished ones, and one bad cell never loses the others."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from _embedded import DATA
from _util import TINY_S, save_training_checkpoint, tiny_clip

import evalkit
from evalkit.engine import RunOptions, assign_shards, plan, run
from evalkit.models.spec import ModelSpec
from evalkit.results.store import UnitStore
from evalkit.tasks.loader import get_task
from evalkit.tasks.spec import TaskError


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return [save_training_checkpoint(tiny_clip(TINY_S, seed=s), d / "run" / "checkpoints" / f"epoch_{s}.pt", epoch=s)
            for s in (1, 2)]


def _specs(ckpts):
    return [ModelSpec(model=str(TINY_S), pretrained=str(p), name=p.stem) for p in ckpts]


def test_rerun_skips_finished_units_and_keeps_values(ckpts, tmp_path):
    opts = dict(out=tmp_path / "out", device="cpu", precision="fp32", cache_dir=tmp_path / "cache")
    first = evalkit.evaluate(_specs(ckpts), ["shapes", "wds/wds_shapes"], data_root=str(DATA / "{dataset}"), **opts)
    assert len(first) == 2 * 2 * 3 and (first.status == "ok").all()
    counts = run(_specs(ckpts), [get_task("shapes"), get_task("wds/wds_shapes")],
                 RunOptions(data_root=str(DATA / "{dataset}"), **opts))
    assert counts == {"ok": 0, "failed": 0, "skipped": 4}
    again = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(first, again)
    # the same images through the folder and the wds layout give the same accuracy
    by = first.pivot_table(index=["model", "metric"], columns="task", values="value")
    assert (by["shapes"] - by["wds/wds_shapes"]).abs().max() < 1e-6


def test_corrupt_image_fails_its_unit_only(ckpts, tmp_path):
    root = tmp_path / "imagenet_folder"
    shutil.copytree(DATA / "imagenet_folder", root)
    victim = sorted((root / "val").glob("*/*"))[5]
    victim.write_bytes(b"not a jpeg at all")
    opts = RunOptions(out=tmp_path / "out", device="cpu", cache_dir=tmp_path / "cache")
    import os

    os.environ["EVALKIT_DATA_ROOT_SHAPES"] = str(root)
    os.environ["EVALKIT_DATA_ROOT_WDS_SHAPES"] = str(DATA / "wds_shapes")
    try:
        counts = run(_specs(ckpts)[:1], [get_task("shapes"), get_task("wds/wds_shapes")], opts)
    finally:
        del os.environ["EVALKIT_DATA_ROOT_SHAPES"], os.environ["EVALKIT_DATA_ROOT_WDS_SHAPES"]
    assert counts == {"ok": 1, "failed": 1, "skipped": 0}
    table = evalkit.results.store.collect(tmp_path / "out")
    failed = table[table.status == "failed"]
    assert list(failed.task) == ["shapes"] and victim.name in failed.error.iloc[0]
    assert (table[table.task == "wds/wds_shapes"].status == "ok").all()


def test_missing_root_and_wrong_layout_say_what_was_expected(ckpts, tmp_path):
    (tmp_path / "empty").mkdir()
    for root, pattern in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "unrecognised layout")):
        table = evalkit.evaluate(_specs(ckpts)[:1], ["wds/anything"], data_root=str(root), out=tmp_path / root.name,
                                 device="cpu", cache_dir=None)
        err = table.error.iloc[0]
        assert table.status.iloc[0] == "failed" and pattern in err and "nshards.txt" in err and str(root) in err


def test_bad_checkpoint_in_grid_marks_it_failed(ckpts, tmp_path):
    bad = tmp_path / "epoch_9.pt"
    bad.write_bytes(ckpts[0].read_bytes()[:1000])
    specs = _specs(ckpts) + [ModelSpec(model=str(TINY_S), pretrained=str(bad), name="bad")]
    table = evalkit.evaluate(specs, ["wds/wds_shapes"], data_root=str(DATA / "{dataset}"), out=tmp_path / "out",
                             device="cpu", cache_dir=tmp_path / "cache")
    status = table.groupby("model").status.first().to_dict()
    assert status == {"epoch_1": "ok", "epoch_2": "ok", "bad": "failed"}
    assert "epoch_9.pt" in table[table.model == "bad"].error.iloc[0]
    # a rerun retries the failed unit only
    store = UnitStore(tmp_path / "out")
    assert len(store.done()) == 2 and len(store.status()) == 3


def test_unknown_task_lists_close_names():
    with pytest.raises(TaskError, match="Close names: imagenet1k"):
        get_task("imagenet1")


def test_shards_partition_the_plan(ckpts):
    specs = [ModelSpec(model="tinyclip-S", pretrained=f"/runs/a/checkpoints/epoch_{i}.pt") for i in range(9)]
    units = plan(specs + specs[:2], [get_task("shapes"), get_task("wds/wds_shapes")])
    assert len(units) == 18  # repeated checkpoints are planned once
    shards = assign_shards(units, 4)
    ids = [u.uid for s in shards for u in s]
    assert sorted(ids) == sorted(u.uid for u in units)
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 2


def test_shards_balance_compute_not_unit_counts():
    """2 ViT-L/14 checkpoints (168.6 GFLOPs) and 10 ViT-B/32 ones (14.5) over 2 shards: by unit count
    a shard could take both L's (6 checkpoints each); by compute each shard gets one L and 5 B's."""
    from evalkit.engine import checkpoint_cost

    big = [ModelSpec(model="ViT-L-14", pretrained=f"/runs/L/checkpoints/epoch_{i}.pt") for i in range(2)]
    small = [ModelSpec(model="ViT-B-32", pretrained=f"/runs/B/checkpoints/epoch_{i}.pt") for i in range(10)]
    units = plan(big + small, [get_task("shapes")])
    assert checkpoint_cost(big[0]) / checkpoint_cost(small[0]) == pytest.approx(168.61 / 14.54, rel=0.1)
    shards = assign_shards(units, 2, checkpoint_cost)
    for shard in shards:
        models = [u.spec.model for u in shard]
        assert models.count("ViT-L-14") == 1 and models.count("ViT-B-32") == 5
    unknown = ModelSpec(model="no-such-arch", pretrained="/x/epoch_1.pt")  # weighs the mean of the known ones
    shards = assign_shards(plan(big + [unknown], [get_task("shapes")]), 2, checkpoint_cost)
    assert sorted(len(s) for s in shards) == [1, 2]


def test_collect_racing_a_finishing_shard_ends_complete(tmp_path, monkeypatch):
    """Shard A reads the units, shard B adds its last one and collects, A writes its older read:
    A must notice the new unit and collect again, so the table on disk ends complete."""
    import pandas as pd

    from evalkit.results.store import UnitStore, collect

    def unit(store: UnitStore, uid: str) -> None:
        store.write(uid, [{"unit_id": uid, "model": uid, "task": "t", "metric": "acc1", "value": 0.5}], "ok")

    store = UnitStore(tmp_path)
    unit(store, "a1")
    unit(store, "a2")
    store.flush()
    rows = UnitStore.rows

    def racing_rows(self):
        out = rows(self)
        if not (self.units / "b1.json").exists():
            unit(UnitStore(tmp_path), "b1")  # shard B finishes during A's collect
        return out

    monkeypatch.setattr(UnitStore, "rows", racing_rows)
    stale = collect(tmp_path, attempts=1)
    assert sorted(stale.unit_id) == ["a1", "a2"]  # without the second look, the table misses b1
    (tmp_path / "units" / "b1.json").unlink()
    collect(tmp_path)
    assert sorted(pd.read_parquet(tmp_path / "results.parquet").unit_id) == ["a1", "a2", "b1"]


def test_shards_weigh_units_by_their_tasks_images():
    """Each unit weighs its task's image count: a checkpoint whose units read 10x the images weighs
    10x, so one such checkpoint balances ten light ones."""
    from dataclasses import replace

    from evalkit.engine import Unit

    big_task = replace(get_task("shapes"), name="big", data={"n_images": 10_000})
    small_task = replace(get_task("shapes"), name="small", data={"n_images": 1_000})
    units = [Unit(ModelSpec(model="m", pretrained="heavy"), big_task, "h")]
    units += [Unit(ModelSpec(model="m", pretrained=f"light{i}"), small_task, f"l{i}") for i in range(10)]
    shards = assign_shards(units, 2, lambda spec: 1.0)
    assert sorted(len(s) for s in shards) == [1, 10]
    assert {u.uid for s in shards if len(s) == 1 for u in s} == {"h"}
