"""Device and precision, decided once before any work: which GPU this rank takes, what happens when
CUDA was asked for and is unusable, fp32 without TF32, autocast for the amp precisions."""

from __future__ import annotations

import contextlib
import logging
import os
import re

import torch

from evalkit.errors import UsageError, UserError
from evalkit.progress import WARNINGS

log = logging.getLogger(__name__)


DEVICE_RE = re.compile(r"cuda(:\d+)?")  # what --device takes besides cpu


class DeviceError(UserError, RuntimeError):
    """A device that was asked for and cannot be used; one line naming the cause."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gpus_in_environment() -> str | None:
    """The variable that says this process was given GPUs, if any."""
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = os.environ.get(var, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{var}={value}"
    return None


def _why_no_cuda() -> str:
    try:
        torch.cuda.init()
    except Exception as e:  # torch says why: no driver, driver too old for this build, no device
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return "no CUDA device visible"


def local_rank() -> int | None:
    """This process's rank on its node (torchrun's LOCAL_RANK, srun's SLURM_LOCALID)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


def resolve_device(requested: str | None = None, gpus_requested: bool = False) -> torch.device:
    """The device to run on, decided once before any work.

    `cuda` (or nothing, on a machine with GPUs) is `cuda:<local rank>`, so the ranks of one node
    (torchrun, `srun --ntasks-per-node=4`) each take their own GPU; with one visible GPU per rank
    (`--gpus-per-task=1`) it is `cuda:0`. When GPUs were asked for (`--device cuda[:N]`,
    `--gpus-per-shard`, or a job with CUDA_VISIBLE_DEVICES/SLURM_JOB_GPUS set) and CUDA is unusable,
    that is an error naming the cause, never a silent fp32 run on the CPU.
    """
    if requested is not None and requested != "cpu" and not DEVICE_RE.fullmatch(requested):
        raise DeviceError(f"--device {requested}: expected cpu, cuda or cuda:N")
    if requested == "cpu":
        return torch.device("cpu")
    asked = (f"--device {requested}" if requested else None) or ("--gpus-per-shard" if gpus_requested else None) \
        or _gpus_in_environment()
    if not torch.cuda.is_available():
        reason = _why_no_cuda()
        if asked:
            raise DeviceError(
                f"CUDA was asked for ({asked}) but torch cannot use it: {reason} (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none: a CPU build'}; CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}). Check the driver and the job's GPU "
                "binding, or pass --device cpu.")
        WARNINGS.warn(log, "no-gpu", "evalkit: warning: no usable GPU (%s); running on the CPU in fp32 "
                      "(--device cpu silences this)", reason)
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if requested and ":" in requested:
        index = int(requested.split(":")[1])
        if index >= n:
            raise DeviceError(f"--device {requested}: only {n} CUDA device(s) visible "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
        return torch.device("cuda", index)
    rank = local_rank()
    if rank is None or n == 1:
        return torch.device("cuda", 0)
    if rank >= n:
        log.warning("evalkit: warning: local rank %d but %d GPUs visible: using cuda:%d, shared with "
                    "another rank", rank, n, rank % n)
    return torch.device("cuda", rank % n)


def configure_precision(device: torch.device, precision: str) -> None:
    """fp32 means fp32: no TF32 matmuls or convolutions (CUDA's default for cuDNN, and a global
    setting other code may have switched on)."""
    if precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def default_precision(device: str) -> str:
    return "amp_bf16" if device.startswith("cuda") else "fp32"


PRECISIONS = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def autocast_for(device: torch.device, precision: str):
    """fp32, or autocast in bf16 / fp16 (clip_benchmark's `--amp` on CUDA is fp16 autocast)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (one of {', '.join(PRECISIONS)})")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


