"""The paper's grid (arXiv:2506.04598) as LAION publishes it: run names read right in both layouts,
the hub's metadata table winning over the name, selection, and bad input failing only its units."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from _embedded import DATA
from _util import TINY_S, fixture_path, save_training_checkpoint, tiny_clip

from evalkit.cli import build_parser, main
from evalkit.errors import UsageError
from evalkit.grids import paper as pg
from evalkit.grids.runs import specs_from_glob, specs_from_run_dir

HUB_TAIL = "_globalbs64_lr0.001_b1_0.9_b2_0.95_sched_cosine_warmup10_gpus1"
CLIP_RUN = "clip_tinyclip-S_s2K_embedded" + HUB_TAIL
MAMMUT_RUN = "mammut_tiny-S_s4K_embedded" + HUB_TAIL
CAP_RUN = "cap_tiny-S_s4K_embedded" + HUB_TAIL
UNKNOWN_ARCH_RUN = "clip_ViT-Q-99_s4K_embedded" + HUB_TAIL
LOG_CLIP_RUN = "datacomp_s2K_bs_64_tinyclip-S_ep4_lr0.001_b1_0.9_b2_0.95_wd0.2_w10_gc1_n1_bs64_sigFalse"
LOG_MAMMUT_RUN = "datacomp_s3M_bs_64_gpu_1_mammut_tiny-S_ep12_lr0.001_b1_0.9_b2_0.95_wd0.2_w10_gc1_n1_bs64_sigFalse"


# --- the parser against every row of the paper's own table --------------------------------------

def test_parser_agrees_with_every_row_of_the_reference_table():
    """name -> namespace, model_simple, arch (`model`), pretrain_dataset, total_epochs, lr schedule, global
    batch, scale, and samples_seen at the row's epoch and per epoch: exact equality on all 1,431 rows
    (the table stores samples_seen as int64; the parser gives ints)."""
    table = pd.read_parquet(fixture_path("scaling-laws", "segmentation_results.parquet"))
    assert len(table) == 1431
    bad = []
    for r in table.itertuples():
        info = pg.parse_run_name(r.name)
        got = (info.namespace, info.model_simple, info.arch, info.pretrain_dataset, info.total_epochs,
               info.lr_scheduler, info.global_batch_size, info.samples_seen_scale_pretty,
               info.samples_seen(r.epoch), info.samples_seen(1), info.lr, info.warmup)
        want = (r.namespace, r.model_simple, r.model, r.pretrain_dataset, r.total_epochs, r.lr_scheduler,
                r.global_batch_size, r.samples_seen_scale_pretty, r.samples_seen, r.samples_seen_per_epoch,
                r.lr, r.warmup)
        if got != want:
            bad.append((r.name, got, want))
    assert not bad, bad[:3]
    # the "3" scales trained 1.024x their rounded token: s3M with 12 epochs is 256,000 per epoch
    info = pg.parse_run_name(table.name[table.samples_seen_scale_pretty == "3M"].iloc[0])
    assert info.total_samples == 3_072_000
    last = info.samples_seen(info.total_epochs)
    assert last == 3_072_000 and isinstance(last, int)


def test_hub_names_parse():
    info = pg.parse_run_name(
        "mammut_ViT-B-32_s12.8B_dfn_2b_globalbs180224_lr0.0025_b1_0.9_b2_0.95_sched_cosine_warmup6000_gpus512")
    assert (info.namespace, info.model_simple, info.arch, info.pretrain_dataset, info.lr_scheduler) == \
        ("mammut", "ViT-B-32", "mammut_ViT-B-32", "dfn_2b", "cosine")
    assert (info.global_batch_size, info.lr, info.warmup, info.total_samples, info.total_epochs) == \
        (180224, 0.0025, 6000, 12_800_000_000, None)
    info = pg.parse_run_name(
        "clip_ViT-B-16-text-plus_s3B_datacomp_1b_globalbs90624_lr0.002_b1_0.9_b2_0.95_sched_const-cooldown_warmup4000_gpus256")
    assert (info.arch, info.pretrain_dataset, info.lr_scheduler, info.samples_seen_scale_pretty) == \
        ("ViT-B-16-text-plus", "datacomp_1b", "const-cooldown", "3B")
    info.total_epochs = 48
    assert info.samples_seen(1) == 64_000_000 and info.samples_seen(48) == 3_072_000_000
    with pytest.raises(pg.RunNameError, match="namespace one of clip, mammut, coca, cap, siglip"):
        pg.parse_run_name("vit_ViT-B-32_s1B_x" + HUB_TAIL)


def test_where_and_epochs_parsing():
    assert pg.parse_where("namespace=mammut|clip, samples_seen_scale_pretty=1.28B") == \
        {"namespace": {"mammut", "clip"}, "samples_seen_scale_pretty": {"1.28B"}}
    with pytest.raises(UsageError, match="unknown key 'modle'.*keys: namespace, model_simple"):
        pg.parse_where("modle=ViT-B-32")
    assert pg.parse_epochs("all") is None and pg.parse_epochs("last") == "last"
    assert pg.parse_epochs("1,5,10") == {1, 5, 10}
    with pytest.raises(UsageError, match="last, all"):
        pg.parse_epochs("final")


# --- layouts on disk ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """One tiny CLIP and one tiny MaMMUT checkpoint in open_clip's training format (hard-linked below)."""
    from evalkit.models.configs import get_arch_config
    from evalkit.models.families.mammut import MaMMUT

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    return {"clip": save_training_checkpoint(tiny_clip(TINY_S), d / "clip.pt"),
            "mammut": save_training_checkpoint(MaMMUT(get_arch_config("mammut_tiny-S")), d / "mammut.pt")}


def _place(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)
    return dst


@pytest.fixture(scope="module")
def hub_root(weights, tmp_path_factory):
    """download_models.py's layout: <root>/<full_name>/epoch_K.pt + an epoch_latest.pt link; no metadata."""
    root = tmp_path_factory.mktemp("download")
    for e in (1, 2):
        _place(weights["clip"], root / CLIP_RUN / f"epoch_{e}.pt")
        _place(weights["mammut"], root / MAMMUT_RUN / f"epoch_{e}.pt")
    os.symlink(root / CLIP_RUN / "epoch_2.pt", root / CLIP_RUN / "epoch_latest.pt")
    os.symlink(root / MAMMUT_RUN / "epoch_2.pt", root / MAMMUT_RUN / "epoch_latest.pt")
    _place(weights["mammut"], root / CAP_RUN / "epoch_1.pt")
    _place(weights["clip"], root / UNKNOWN_ARCH_RUN / "epoch_1.pt")
    _place(weights["clip"], root / "not-a-run-name" / "epoch_1.pt")
    return root


def test_hub_layout_end_to_end(hub_root, tmp_path, caplog):
    """`--run-dir` on the download layout with no --model: architecture, family and identity from each
    name; epoch_latest never evaluated; a cap run's contrastive task is not planned (one warning line, no
    row, never a failed unit); an unknown architecture and an unparseable name fail only their own units; identity columns and gflops_total in the table (CLIP and MaMMUT)."""
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc = main(["run", "--run-dir", str(hub_root), "--tasks", "wds/wds_shapes", "--data-root",
                   str(DATA / "{dataset}"), "--device", "cpu", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 1  # some units failed, the rest ran
    table = pd.read_parquet(out / "results.parquet")
    main_rows = table[table.metric.isin(["acc1", "error"])].set_index("model")
    assert not any("epoch_latest" in m for m in main_rows.index) and len(main_rows) == 6
    assert not table.model.str.startswith(CAP_RUN).any()
    assert "1 unit not planned: zeroshot_classification reads the contrastive head, which family cap" in caplog.text
    ok = main_rows[main_rows.status == "ok"]
    assert sorted(ok.index) == sorted(f"{r}/epoch_{e}" for r in (CLIP_RUN, MAMMUT_RUN) for e in (1, 2))
    clip1, mam2 = ok.loc[f"{CLIP_RUN}/epoch_1"], ok.loc[f"{MAMMUT_RUN}/epoch_2"]
    assert (clip1.arch, clip1.family, clip1.namespace, clip1.model_simple, clip1.pretrain_dataset) == \
        ("tinyclip-S", "clip", "clip", "tinyclip-S", "embedded")
    assert (mam2.arch, mam2.family, mam2.namespace, mam2.model_simple) == ("mammut_tiny-S", "mammut", "mammut", "tiny-S")
    # no metadata table, no ep<N>: total epochs = the largest epoch present (2), with a warning
    assert clip1.total_epochs == 2 and clip1.samples_seen == 1000 and mam2.samples_seen == 4000
    assert (clip1.samples_seen_scale_pretty, clip1.global_batch_size, clip1.lr_scheduler, clip1.run) == \
        ("2K", 64, "cosine", CLIP_RUN)
    assert "total epochs unknown" in caplog.text and "taking the largest epoch present, 2" in caplog.text
    for _, r in ok.iterrows():
        assert r.gflops_total == pytest.approx(r.gflops_per_sample * r.samples_seen)
    failed = main_rows[main_rows.status == "failed"].error
    assert "ViT-Q-99" in failed[f"{UNKNOWN_ARCH_RUN}/epoch_1"] and "open_clip architecture" in failed[f"{UNKNOWN_ARCH_RUN}/epoch_1"]
    err = failed["not-a-run-name/epoch_1"]
    assert "not-a-run-name" in err and "expected a hub name" in err and "--model" in err
    assert set(pd.read_csv(out / "results.csv").columns) >= {
        "namespace", "model_simple", "pretrain_dataset", "lr_scheduler", "samples_seen_scale_pretty",
        "total_epochs", "global_batch_size", "run", "gflops_total"}


def _specs_cli(*argv: str):
    from evalkit.cli.run import _specs

    return _specs(build_parser().parse_args(["run", "--tasks", "x", *argv]))


def test_where_and_epochs_select(hub_root):
    names = lambda specs: sorted(s.name for s in specs)  # noqa: E731
    assert names(_specs_cli("--run-dir", str(hub_root), "--where", "namespace=mammut")) == \
        [f"{MAMMUT_RUN}/epoch_1", f"{MAMMUT_RUN}/epoch_2"]
    assert names(_specs_cli("--run-dir", str(hub_root), "--where", "namespace=clip|mammut,model_simple=tinyclip-S|tiny-S",
                            "--epochs", "last")) == [f"{CLIP_RUN}/epoch_2", f"{MAMMUT_RUN}/epoch_2"]
    assert names(_specs_cli("--checkpoints", str(hub_root / "*" / "epoch_*.pt"), "--epochs", "1",
                            "--where", "samples_seen_scale_pretty=2K,pretrain_dataset=embedded,lr_scheduler=cosine")) == \
        [f"{CLIP_RUN}/epoch_1"]
    assert len(_specs_cli("--run-dir", str(hub_root))) == 7  # default: all epochs, no epoch_latest
    assert len(_specs_cli("--checkpoints", str(hub_root / "*" / "epoch_*.pt"))) == 7  # the glob matches epoch_latest.pt
    with pytest.raises(UsageError, match="unknown key 'size'; keys: namespace"):
        _specs_cli("--run-dir", str(hub_root), "--where", "size=B")


def test_cli_unknown_where_key_is_one_line(hub_root, tmp_path, capsys):
    rc = main(["run", "--run-dir", str(hub_root), "--where", "nmespace=clip", "--tasks", "wds/wds_shapes",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key 'nmespace'" in err and "samples_seen_scale_pretty" in err


def test_model_overrides_the_architecture_only(hub_root):
    specs = _specs_cli("--run-dir", str(hub_root), "--model", str(TINY_S), "--where", f"run={CAP_RUN}")
    assert len(specs) == 1 and specs[0].model == str(TINY_S) and specs[0].error is None
    assert (specs[0].namespace, specs[0].samples_seen_scale_pretty) == ("cap", "4K")


def test_namespaces_without_an_architecture_are_not_supported(weights, tmp_path):
    root = tmp_path / "dl"
    for run in ("siglip_tinyclip-S_s2K_embedded" + HUB_TAIL, "coca_ViT-Q-99_s2K_embedded" + HUB_TAIL):
        _place(weights["clip"], root / run / "epoch_1.pt")
    errors = {s.namespace: s.error for s in specs_from_run_dir(root)}
    assert "'siglip'" in errors["siglip"] and "tinyclip-S-SigLIP" in errors["siglip"] and "not supported" in errors["siglip"]
    assert "'coca'" in errors["coca"] and "coca_ViT-Q-99" in errors["coca"] and "not supported" in errors["coca"]


def test_the_papers_siglip_and_coca_runs_resolve_to_their_architectures(weights, tmp_path):
    """The paper's SigLIP runs are CLIP towers with a logit bias (model_profile.csv's `ViT-B-32-SigLIP`),
    its CoCa runs the fork's coca_* configs: both are evaluated, built by open_clip (clip family)."""
    root = tmp_path / "dl"
    runs = {"siglip_ViT-B-32_s1.28B_datacomp_1b" + HUB_TAIL: "ViT-B-32-SigLIP",
            "siglip_ViT-B-16-text-plus_s1.28B_datacomp_1b" + HUB_TAIL: "ViT-B-16-text-plus-SigLIP",
            "coca_ViT-S-32_s1.28B_datacomp_1b" + HUB_TAIL: "coca_ViT-S-32",
            "coca_ViT-L-14_s1.28B_datacomp_1b" + HUB_TAIL: "coca_ViT-L-14"}
    for run in runs:
        _place(weights["clip"], root / run / "epoch_1.pt")
    specs = {s.run: s for s in specs_from_run_dir(root)}
    assert {run: (s.model, s.error, s.family) for run, s in specs.items()} == {
        run: (arch, None, "clip") for run, arch in runs.items()}


def _metadata(root: Path, rows: list[dict]) -> None:
    (root / "cache").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "cache" / "results.parquet", index=False)


def test_metadata_table_wins_over_the_name(weights, tmp_path, caplog):
    root = tmp_path / "download"
    for e in (1, 2, 4):
        _place(weights["clip"], root / CLIP_RUN / f"epoch_{e}.pt")
    other = "clip_tinyclip-S_s4K_embedded" + HUB_TAIL  # on disk, not in the table
    _place(weights["clip"], root / other / "epoch_1.pt")
    rows = [{"full_name": CLIP_RUN, "namespace": "clip", "model_simple": "tinyclip-S", "pretrain_dataset": "dfn_2b",
             "lr_scheduler": "const", "samples_seen_scale_pretty": "2K", "epoch": e, "total_epochs": 3,
             "samples_seen": 700 * e, "downstream_dataset": ds, "acc1": 0.5}
            for e in (1, 2, 3) for ds in ("imagenet1k", "mscoco")]
    rows.append({**rows[0], "full_name": "clip_ViT-B-32_s3B_gone" + HUB_TAIL})
    _metadata(root, rows)
    with caplog.at_level(logging.WARNING):
        specs = {s.name: s for s in specs_from_run_dir(root)}
    s1, s4 = specs[f"{CLIP_RUN}/epoch_1"], specs[f"{CLIP_RUN}/epoch_4"]
    assert (s1.pretrain_dataset, s1.lr_scheduler, s1.total_epochs, s1.samples_seen) == ("dfn_2b", "const", 3, 700)
    assert specs[f"{CLIP_RUN}/epoch_2"].samples_seen == 1400
    assert s4.samples_seen == 2800  # beyond the table: total (2,100) x 4 / 3
    text = caplog.text
    assert "epoch 4 is beyond total_epochs=3" in text and str(root / "cache" / "results.parquet") in text
    assert "pretrain_dataset=embedded" in text and "pretrain_dataset=dfn_2b" in text  # both named
    assert f"no row with full_name '{other}'" in text
    assert specs[f"{other}/epoch_1"].pretrain_dataset == "embedded"  # from its name


def test_training_log_layout(weights, tmp_path, caplog):
    """`<root>/<run name>/checkpoints/epoch_K.pt` without params.txt: total epochs from ep<N>, no warning;
    the checkpoints load as the architecture the name gives."""
    from evalkit.models.factory import load_model

    root = tmp_path / "logs"
    for e in (1, 2):
        _place(weights["clip"], root / LOG_CLIP_RUN / "checkpoints" / f"epoch_{e}.pt")
    _place(weights["mammut"], root / LOG_MAMMUT_RUN / "checkpoints" / "epoch_3.pt")
    with caplog.at_level(logging.WARNING):
        specs = {s.name: s for s in specs_from_glob(str(root / "*" / "checkpoints" / "epoch_*.pt"))}
    assert "total epochs unknown" not in caplog.text
    c2, m3 = specs[f"{LOG_CLIP_RUN}/epoch_2"], specs[f"{LOG_MAMMUT_RUN}/epoch_3"]
    assert (c2.model, c2.namespace, c2.pretrain_dataset, c2.total_epochs, c2.samples_seen) == \
        ("tinyclip-S", "clip", "datacomp_1b", 4, 1000)
    assert (m3.model, m3.namespace, m3.total_epochs, m3.samples_seen, m3.global_batch_size) == \
        ("mammut_tiny-S", "mammut", 12, 768_000, 64)  # s3M trained 3.072M samples over 12 epochs
    assert load_model(c2).family == "clip" and load_model(m3).family == "mammut"


def test_params_txt_runs_keep_working_beside_the_grid(weights, tmp_path):
    root = tmp_path / "mixed"
    _place(weights["clip"], root / "my-run" / "checkpoints" / "epoch_3.pt")
    (root / "my-run" / "params.txt").write_text("model: tinyclip-S\ntrain_num_samples: 1000\nname: my-run\n"
                                                "epochs: 5\nbatch_size: 32\nworld_size: 2\n")
    _place(weights["clip"], root / CLIP_RUN / "epoch_1.pt")
    specs = {s.name: s for s in specs_from_run_dir(root)}
    mine = specs["my-run/epoch_3"]
    assert (mine.model, mine.samples_seen, mine.total_epochs, mine.global_batch_size, mine.run) == \
        ("tinyclip-S", 3000.0, 5, 64, "my-run")
    assert specs[f"{CLIP_RUN}/epoch_1"].namespace == "clip"


def test_real_architecture_in_fp16_loads_from_the_hub_layout(tmp_path):
    """A random-init ViT-S-32 saved in fp16, named as the hub names it, loads with no --model."""
    import open_clip

    from evalkit.models.factory import load_model

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32")
    run = "clip_ViT-S-32_s1.28M_datacomp_1b_globalbs256_lr0.001_b1_0.9_b2_0.95_sched_cosine_warmup500_gpus1"
    path = tmp_path / "dl" / run / "epoch_10.pt"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 10, "state_dict": {f"module.{k}": v.half() for k, v in model.state_dict().items()}}, path)
    _metadata(tmp_path / "dl", [{"full_name": run, "namespace": "clip", "model_simple": "ViT-S-32", "epoch": 10,
                                 "total_epochs": 10, "pretrain_dataset": "datacomp_1b", "lr_scheduler": "cosine",
                                 "samples_seen_scale_pretty": "1.28M", "downstream_dataset": "imagenet1k"}])
    (spec,) = specs_from_run_dir(tmp_path / "dl")
    assert (spec.model, spec.samples_seen, spec.error) == ("ViT-S-32", 1_280_000, None)
    lm = load_model(spec)
    assert lm.arch == "ViT-S-32" and lm.preprocess.size == 224
    w = lm.model.state_dict()["visual.conv1.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, model.state_dict()["visual.conv1.weight"].half().float())


# --- the zoo --------------------------------------------------------------------------------------

OPENMAMMUT = {
    "openMaMMUT-L-14": "laion/openMaMMUT-ViT-L-14-DataComp-1.4B-s12.8B-b180K",
    "openMaMMUT-B-32-512-DFN": "laion/openMaMMUT-ViT-B-32-512x512-pt_DFN2B-ft_DFN512x512-s293M-b73k",
    "openMaMMUT-B-16-512-DFN": "laion/openMaMMUT-ViT-B-16-512x512-pt_DFN2B-ft_DFN512x512-s293M-b73k",
    "openMaMMUT-L-14-512-DFN": "laion/openMaMMUT-ViT-L-14-512x512-pt_datacomp1b-ft_DFN512x512-s293M-b32k",
    "openMaMMUT-L-14-512-DataComp": "laion/openMaMMUT-ViT-L-14-512x512-pt_datacomp1b-ft_datacomp512x512-s76M-b73k",
    "openMaMMUT-B-16-512-DataComp": "laion/openMaMMUT-ViT-B-16-512x512-pt_datacomp1b-ft_datacomp512x512-s76M-b73k",
    "openMaMMUT-B-32-512-DataComp": "laion/openMaMMUT-ViT-B-32-512x512-pt_datacomp1b-ft_datacomp512x512-s76M-b73k",
}


@pytest.mark.parametrize("name", sorted(OPENMAMMUT))
def test_zoo_names_every_released_openmammut(name):
    from evalkit.grids.zoo import resolve_model_arg

    spec = resolve_model_arg(name)  # no download: the zoo entry alone
    assert spec.model == f"hf-hub:{OPENMAMMUT[name]}" and spec.pretrained is None
    assert spec.family == "mammut" and spec.name == name


def test_a_params_txt_run_without_contrastive_loss_is_cap(tmp_path):
    """open_clip_train writes `coca_contrastive_loss_weight` to params.txt: 0 on a MaMMUT run is the paper's
    `cap` (its weights look like any MaMMUT's); on a CoCa, or a MaMMUT with the loss on, the weights decide."""
    from evalkit.grids.runs import spec_for_checkpoint

    def family(arch: str, weight: str | None, given: str | None = None) -> str | None:
        run = tmp_path / f"{arch}-{weight}-{given}"
        (run / "checkpoints").mkdir(parents=True)
        line = f"coca_contrastive_loss_weight: {weight}\n" if weight is not None else ""
        (run / "params.txt").write_text(f"model: {arch}\ntrain_num_samples: 1000\n{line}")
        return spec_for_checkpoint(run / "checkpoints" / "epoch_1.pt", family=given).family

    assert family("mammut_ViT-B-32", "0.0") == "cap" and family("mammut_tiny-S", "0") == "cap"
    assert family("mammut_ViT-B-32", "1.0") is None and family("mammut_ViT-B-32", None) is None
    assert family("coca_ViT-B-32", "0.0") is None  # a CoCa stays a CoCa
    assert family("mammut_ViT-B-32", "0.0", given="mammut") == "mammut"  # --family wins
