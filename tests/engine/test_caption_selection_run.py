"""Caption selection end to end through `evalkit.engine.run`: the built-in tasks and suites on tiny
SugarCrepe and Winoground folders found by `--data-root '/data/{dataset}'`, a CLIP, a MaMMUT and a cap
checkpoint together; the suite average against the mean of its members; a resumed run computes
nothing; a missing subset fails its unit and the average (naming it) and nothing else."""

from __future__ import annotations

import math
import shutil

from _caption_sets import make_sugar_crepe, make_winoground_release
from _embedded import trained_checkpoint

from evalkit.data.formats.selection import SUGAR_CREPE_SUBSETS
from evalkit.engine import RunOptions, run
from evalkit.models.spec import ModelSpec
from evalkit.results.store import collect
from evalkit.tasks.loader import get_task

TASKS = ["sugar_crepe", "winoground", "sugar_crepe_generative", "winoground_generative"]


def _models(tmp_path) -> list[ModelSpec]:
    clip_ckpt, clip_cfg = trained_checkpoint("tinyclip-S_s2k")
    mammut_ckpt, mammut_cfg = trained_checkpoint("mammut-tiny-S_s4k")
    cap_ckpt = tmp_path / "cap_run" / "epoch_4.pt"  # another checkpoint file (a unit is keyed by it)
    cap_ckpt.parent.mkdir()
    shutil.copyfile(mammut_ckpt, cap_ckpt)
    return [ModelSpec(model=str(clip_cfg), pretrained=str(clip_ckpt), name="clip"),
            ModelSpec(model=str(mammut_cfg), pretrained=str(mammut_ckpt), name="mammut"),
            # a captioning-only run: MaMMUT's keys, no contrastive head (the paper's cap_*)
            ModelSpec(model=str(mammut_cfg), pretrained=str(cap_ckpt), name="cap", family="cap")]


def _average_ok(table, model: str, suite: str, members: list[str]) -> None:
    rows = table[(table.model == model)]
    accs = [float(rows[(rows.task == m) & (rows.metric == "acc")].value.iloc[0]) for m in members]
    avg = rows[(rows.task == suite) & (rows.metric == "average")]
    assert list(avg.status) == ["ok"], avg.error.tolist()
    assert math.isclose(float(avg.value.iloc[0]), sum(accs) / 7, abs_tol=1e-9)


def test_suites_and_both_protocols_end_to_end(tmp_path):
    data = tmp_path / "data"
    make_sugar_crepe(data / "sugar_crepe", n=5)
    make_winoground_release(data / "winoground", n=4)
    opts = RunOptions(data_root=str(data / "{dataset}"), out=tmp_path / "out", device="cpu", cache_dir=tmp_path / "cache",
                      num_workers=0, batch_size=4)
    models = _models(tmp_path)
    specs = [get_task(t) for t in TASKS]
    counts = run(models, specs, opts)
    table = collect(opts.out)
    contrastive = [f"sugar_crepe/{s}" for s in SUGAR_CREPE_SUBSETS]
    generative = [f"{t}_generative" for t in contrastive]

    clip, mammut, cap = (table[table.model == m] for m in ("clip", "mammut", "cap"))
    assert (mammut.status == "ok").all(), mammut.error.tolist()
    _average_ok(table, "mammut", "sugar_crepe", contrastive)
    _average_ok(table, "mammut", "sugar_crepe_generative", generative)
    _average_ok(table, "clip", "sugar_crepe", contrastive)
    # CLIP has no decoder: each generative unit is one line naming the family; its averages fail naming members
    gen = clip[clip.task.isin([*generative, "winoground_generative"])]
    assert (gen.status == "failed").all() and gen.error.str.contains("family clip\\) has no captioning decoder").all()
    assert "members not ok" in clip[clip.task == "sugar_crepe_generative"].error.iloc[0]
    # cap: the contrastive tasks are not planned at all (no row, no failure), the generative ones run
    # nor a row of the contrastive suite `sugar_crepe`, none of whose members was planned for it
    assert set(cap.task) == {*generative, "winoground_generative", "sugar_crepe_generative"}
    assert (cap.status == "ok").all(), cap.error.tolist()
    _average_ok(table, "cap", "sugar_crepe_generative", generative)
    # cap and mammut share weights and decoder: the same generative numbers
    for t in (*generative, "winoground_generative"):
        a = mammut[(mammut.task == t) & (mammut.metric == "acc")].value.iloc[0]
        b = cap[(cap.task == t) & (cap.metric == "acc")].value.iloc[0]
        assert a == b, t
    for frame in (clip, mammut):
        wino = frame[(frame.task == "winoground") & (frame.metric != "average")]
        assert set(wino.metric) == {"image_acc", "text_acc", "acc"} and (wino.n_samples == 4).all()
        assert set(frame[frame.task == "sugar_crepe/add_att"].n_samples) == {5}

    # a rerun finds every unit done; only the failed ones are tried again (and fail again)
    again = run(models, specs, opts)
    failed_units = table[table.status == "failed"].unit_id.nunique()
    assert again == {"ok": 0, "failed": failed_units, "skipped": counts["ok"]}

    # a subset file gone: its units fail naming the file, the averages fail naming it, the rest stays
    (data / "sugar_crepe" / "swap_obj.json").unlink()
    run(models[:2], [get_task("sugar_crepe")], opts)
    table = collect(opts.out)
    m = table[table.model == "mammut"]
    swap = m[m.task == "sugar_crepe/swap_obj"]
    assert list(swap.status) == ["failed"] and "swap_obj.json: not found" in swap.error.iloc[0]
    avg = m[(m.task == "sugar_crepe") & (m.metric == "average")]
    assert list(avg.status) == ["failed"] and "sugar_crepe/swap_obj" in avg.error.iloc[0]
    assert (m[m.task.isin(contrastive[:-1])].status == "ok").all()
