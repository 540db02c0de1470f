"""Safe reading of checkpoint files into a plain state dict.

Checkpoints are pickles, and a pickle can run code. We never unpickle with full pickle: `.pt`/`.bin`
files go through `torch.load(weights_only=True)` with the smallest allowlist that real open_clip
training checkpoints need (numpy scalars and dtypes that old `scaler`/metadata entries carry,
open_clip issue #998), and `.safetensors` through safetensors. Everything else is refused with a
message that names the file.

torch keeps the `weights_only` allowlist in one process-wide set, and `torch.serialization.safe_globals`
adds to it on entry and removes on exit: two loads overlapping in threads (the prefetch thread reads the
next checkpoint while another is read) would see the first to finish take the allowlist from under the
other. So evalkit's loads share one registration, counted under a lock (`_training_checkpoint_globals`):
the first load to start adds the globals torch does not already allow, the last to finish removes
exactly those. Loads still run in parallel, evalkit adds nothing beyond these few numpy globals, and
between evalkit loads other `torch.load` callers (open_clip's loader included) are as strict as before;
while one runs, a concurrent foreign `torch.load` sees them too, as torch offers no per-call allowlist.
(Registering once for the life of the process would also be thread-safe, but would widen every other
weights_only load in the process for good.)
"""

from __future__ import annotations

import functools
import pickle
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from evalkit.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model; the message says what to do."""


@functools.cache
def _numpy_allowlist() -> tuple:
    """The numpy globals that appear in real training checkpoints (scalars and their dtypes)."""
    import numpy as np

    allowed: list = [np.dtype]
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["scalar"])
            allowed.append(mod.scalar)
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return tuple(allowed)


_allowlist_lock = threading.Lock()
_allowlist_users = 0  # evalkit loads in progress, in all threads
_allowlist_held: torch.serialization.safe_globals | None = None  # entered by the first of them


@contextmanager
def _training_checkpoint_globals() -> Iterator[None]:
    """The numpy allowlist, registered while at least one evalkit load runs (see the module docstring).

    One `safe_globals` context spans all overlapping loads: entered by the first to start, exited by
    the last to finish. It holds only the globals torch did not allow already, so its exit never takes
    away one the caller had registered.
    """
    global _allowlist_users, _allowlist_held
    with _allowlist_lock:
        if _allowlist_users == 0:
            present = set(torch.serialization.get_safe_globals())
            held = torch.serialization.safe_globals([g for g in _numpy_allowlist() if g not in present])
            held.__enter__()
            _allowlist_held = held
        _allowlist_users += 1
    try:
        yield
    finally:
        with _allowlist_lock:
            _allowlist_users -= 1
            if _allowlist_users == 0 and _allowlist_held is not None:
                held, _allowlist_held = _allowlist_held, None
                held.__exit__(None, None, None)


def _torch_load(path: Path) -> object:
    try:
        with _training_checkpoint_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds Python objects beyond tensors and plain "
            f"containers ({str(e).splitlines()[-1] if str(e) else 'unsupported global'}). evalkit only loads "
            "checkpoints with torch.load(weights_only=True). If you trust the file, re-save its state_dict "
            "with torch.save(ckpt['state_dict'], PATH) or as .safetensors."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "The file is truncated or corrupt: copy it again from the training run."
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (`.safetensors`, training `epoch_N.pt`, bare state dict) as a state dict.

    A `{'state_dict': ...}` wrapper is unwrapped and a DDP `module.` prefix removed, as open_clip does.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file. Check the path (or the glob) you gave.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read the safetensors file ({e}). It is truncated or corrupt.") from None
    else:
        obj = _torch_load(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: not a state dict (expected a mapping of parameter names to tensors, or an open_clip "
            "training checkpoint with a 'state_dict' entry)."
        )
    state = dict(obj)
    if state and next(iter(state)).startswith("module."):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state


def read_training_metadata(path: str | Path) -> dict[str, object]:
    """The non-tensor fields of an open_clip training checkpoint (epoch, name), without the weights' cost."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return {}
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return {k: v for k, v in obj.items() if k in ("epoch", "name")}
    return {}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strictly load `state` into `model`, naming missing and unexpected keys when it does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def _show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        raise CheckpointError(
            f"{source}: the checkpoint does not fit the architecture {getattr(model, 'evalkit_arch', '')!s}. "
            f"Missing keys: [{_show(missing)}]. Unexpected keys: [{_show(unexpected)}]. "
            "Pass the architecture the checkpoint was trained with (--model, or params.txt beside checkpoints/)."
        )
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(
            f"{source}: shape mismatch against architecture {getattr(model, 'evalkit_arch', '')!s}: "
            + "; ".join(mismatched[:6])
            + ". Pass the architecture the checkpoint was trained with."
        )
    model.load_state_dict(state, strict=True)
