"""The device a run takes, decided before any work: never a silent CPU fallback when GPUs were asked
for, one GPU per rank, fp32 without TF32, and the previous model released before the next is built."""

from __future__ import annotations

import logging
import weakref

import pytest
import torch
from _embedded import DATA
from _util import TINY_M, TINY_S, save_training_checkpoint, tiny_clip

from evalkit.cli import main
from evalkit.engine import DeviceError, RunOptions, configure_precision, resolve_device, run
from evalkit.models.spec import ModelSpec
from evalkit.progress import WARNINGS
from evalkit.tasks.loader import get_task

GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "LOCAL_RANK", "SLURM_LOCALID")


@pytest.fixture
def no_gpu_env(monkeypatch):
    for var in GPU_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    WARNINGS.reset()  # the no-GPU warning is said once per process: each test starts fresh
    yield
    WARNINGS.reset()


def test_cpu_when_asked(no_gpu_env):
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("how", ["--device cuda", "--device cuda:1", "env", "submit"])
def test_gpus_asked_without_cuda_is_an_error(no_gpu_env, monkeypatch, how):
    requested, gpus = {"--device cuda": ("cuda", False), "--device cuda:1": ("cuda:1", False),
                       "env": (None, False), "submit": (None, True)}[how]
    if how == "env":
        monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    with pytest.raises(DeviceError) as e:
        resolve_device(requested, gpus)
    msg = str(e.value)
    assert "\n" not in msg and "CUDA was asked for" in msg and torch.__version__ in msg
    assert {"--device cuda": "--device cuda", "--device cuda:1": "--device cuda:1", "env": "SLURM_JOB_GPUS=0",
            "submit": "--gpus-per-shard"}[how] in msg
    assert "--device cpu" in msg


def test_no_gpu_not_asked_warns_once(no_gpu_env, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_device(None) == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")
    warnings = [r for r in caplog.records if "no usable GPU" in r.getMessage()]
    assert len(warnings) == 1 and "fp32" in warnings[0].getMessage()


def test_bad_device_string():
    with pytest.raises(DeviceError, match="cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@pytest.fixture
def four_gpus(monkeypatch):
    for var in GPU_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.mark.parametrize("env,expected", [({}, 0), ({"LOCAL_RANK": "2"}, 2), ({"SLURM_LOCALID": "3"}, 3),
                                          ({"LOCAL_RANK": "1", "SLURM_LOCALID": "3"}, 1)])
def test_one_gpu_per_local_rank(four_gpus, monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert resolve_device(None) == torch.device("cuda", expected)
    assert resolve_device("cuda") == torch.device("cuda", expected)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins


def test_one_visible_gpu_per_rank_is_cuda0(four_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("SLURM_LOCALID", "3")  # srun --gpus-per-task=1: each rank sees only its own GPU
    assert resolve_device(None) == torch.device("cuda", 0)


def test_device_index_beyond_visible(four_gpus):
    with pytest.raises(DeviceError, match="only 4 CUDA device"):
        resolve_device("cuda:4")


def test_cli_device_cuda_without_gpu_is_one_line(no_gpu_env, tmp_path, capsys):
    rc = main(["run", "--model", str(TINY_S), "--tasks", "shapes", "--device", "cuda:0", "--out", str(tmp_path / "o"),
               "--data-root", str(DATA / "{dataset}")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "CUDA was asked for (--device cuda:0)" in err
    assert not (tmp_path / "o" / "units").exists(), "nothing runs on a device that was not asked for"


def test_cli_refuses_unknown_device(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--model", "x", "--tasks", "shapes", "--device", "gpu"])
    assert e.value.code == 2  # argparse's usage error, before anything runs
    assert "expected cpu, cuda or cuda:N" in capsys.readouterr().err


def test_fp32_turns_tf32_off():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        configure_precision(torch.device("cuda"), "amp_bf16")
        assert torch.backends.cuda.matmul.allow_tf32  # autocast modes leave the user's setting
        configure_precision(torch.device("cuda"), "fp32")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[0], old[1]
        torch.set_float32_matmul_precision(old[2])


def test_previous_architecture_released_before_the_next_is_built(tmp_path, monkeypatch):
    """At an architecture change the engine holds nothing of the previous model (module, classifier,
    runners, results), so it is collectable before the next one is built."""
    from evalkit.models.families.clip import CLIPFamily

    ckpts = [(TINY_S, save_training_checkpoint(tiny_clip(TINY_S, seed=1), tmp_path / "s" / "epoch_1.pt")),
             (TINY_M, save_training_checkpoint(tiny_clip(TINY_M, seed=2), tmp_path / "m" / "epoch_1.pt")),
             (TINY_S, save_training_checkpoint(tiny_clip(TINY_S, seed=3), tmp_path / "s2" / "epoch_1.pt"))]
    built: list[weakref.ref] = []
    alive_at_build: list[int] = []
    original = CLIPFamily.build.__func__

    def build(cls, name, cfg):
        alive_at_build.append(sum(r() is not None for r in built))
        model = original(cls, name, cfg)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(CLIPFamily, "build", classmethod(build))
    specs = [ModelSpec(model=str(cfg), pretrained=str(p), name=f"{cfg.stem}-{i}") for i, (cfg, p) in enumerate(ckpts)]
    counts = run(specs, [get_task("shapes")],
                 RunOptions(out=tmp_path / "out", data_root=str(DATA / "{dataset}"), device="cpu", cache_dir=None))
    assert counts["ok"] == 3
    assert len(built) == 3 and alive_at_build == [0, 0, 0]
