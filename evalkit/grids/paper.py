"""The paper's checkpoint grid (arXiv:2506.04598) read from its run names and its metadata table.

Two name layouts, no params.txt in either:

- the hub / download layout of `laion/scaling-laws-for-comparison` (`download_models.py`):
  `<namespace>_<model_simple>_s<scale>_<pretrain_dataset>_globalbs<N>_lr<x>_b1_<x>_b2_<x>_sched_<schedule>_warmup<N>_gpus<N>`,
  e.g. `mammut_ViT-B-32_s12.8B_dfn_2b_globalbs180224_lr0.0025_b1_0.9_b2_0.95_sched_cosine_warmup6000_gpus512`;
- the training-log layout of the same lab (the `name` column of segmentation_results.parquet):
  `<dataset>_s<scale>_bs_<global batch>[_gpu_<N>][_warmup_<N>]_[<namespace>_]<model_simple>_ep<N>_lr<x>_b1_<x>_b2_<x>_wd<x>_w<N>_gc<N>_n<nodes>_bs<local batch>_sig<True|False>`,
  e.g. `datacomp_s3M_bs_1024_mammut_ViT-L-32_ep12_lr0.0005_b1_0.9_b2_0.95_wd0.2_w2000_gc1_n1_bs256_sigFalse`
  (CLIP runs carry no namespace token; `sigTrue` marks a SigLIP run).

**Samples seen.** The `s<scale>` token is the paper's *rounded* scale (`samples_seen_scale_pretty`):
the runs trained `train_num_samples` per epoch for `epochs` epochs, and the table's
`samples_seen = train_num_samples x epoch`. For the 1.28/6.4/12.8/64/128/640 scales the total equals
the token; the "3" scales are 2.4 x the 1.28 ones: s3M trained 3.072M samples, s30M 30.72M,
s300M 307.2M, s3B 3.072B (checked on every row of segmentation_results.parquet: s3M with ep12 is
256,000 samples per epoch, never 250,000). `TOTAL_SAMPLES` holds these exact totals; a scale not in
it is read literally. samples_seen at epoch k = total samples x k / total epochs.

Nothing here imports torch or open_clip.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from evalkit.errors import UsageError, UserError

log = logging.getLogger(__name__)

NAMESPACES = ("clip", "mammut", "coca", "cap", "siglip")
LR_SCHEDULERS = ("cosine", "const", "const-cooldown")

# The exact number of samples each of the paper's scales trained on (see the module docstring).
TOTAL_SAMPLES: dict[str, int] = {
    "1.28M": 1_280_000, "3M": 3_072_000, "6.4M": 6_400_000, "12.8M": 12_800_000, "30M": 30_720_000,
    "64M": 64_000_000, "128M": 128_000_000, "300M": 307_200_000, "640M": 640_000_000,
    "1.28B": 1_280_000_000, "3B": 3_072_000_000, "6.4B": 6_400_000_000, "12.8B": 12_800_000_000,
}

# Dataset tokens of the training-log names -> the paper's pretrain_dataset values.
DATASET_ALIASES = {
    "datacomp": "datacomp_1b", "datacomp1b": "datacomp_1b", "datacomp_1b": "datacomp_1b",
    "dfn": "dfn_2b", "dfn2b": "dfn_2b", "dfn_2b": "dfn_2b",
    "relaion": "relaion2b-en", "relaion2b": "relaion2b-en", "relaion2b-en": "relaion2b-en",
}

# The open_clip / evalkit architecture of a namespace's model: `mammut_ViT-B-32`, `ViT-B-32`, ...
_ARCH_OF = {
    "clip": "{m}", "mammut": "mammut_{m}", "coca": "coca_{m}", "cap": "mammut_{m}", "siglip": "{m}-SigLIP",
}

_SCALE = r"\d+(?:\.\d+)?[KkMB]?"
_NUM = r"[0-9.e+-]+"
HUB_RE = re.compile(
    rf"^(?P<namespace>{'|'.join(NAMESPACES)})_(?P<model>.+?)_s(?P<scale>{_SCALE})_(?P<dataset>.+)"
    rf"_globalbs(?P<gbs>\d+)_lr(?P<lr>{_NUM})_b1_(?P<b1>{_NUM})_b2_(?P<b2>{_NUM})"
    rf"_sched_(?P<sched>[A-Za-z-]+)_warmup(?P<warmup>\d+)_gpus(?P<gpus>\d+)(?:_.*)?$"
)
LOG_RE = re.compile(
    rf"^(?P<dataset>.+?)_s(?P<scale>{_SCALE})_bs_(?P<gbs>\d+)(?:_gpu_(?P<gpus>\d+))?(?:_warmup_(?P<warmup0>\d+))?"
    rf"_(?:(?P<namespace>{'|'.join(NAMESPACES)})_)?(?P<model>[^_]+(?:_[^_]+)*?)_ep(?P<epochs>\d+)"
    rf"_lr(?P<lr>{_NUM})_b1_(?P<b1>{_NUM})_b2_(?P<b2>{_NUM})(?:_wd(?P<wd>{_NUM}))?(?:_w(?P<warmup>\d+))?"
    rf"(?:_gc(?P<gc>\d+))?(?:_n(?P<nodes>\d+))?(?:_bs(?P<lbs>\d+))?(?:_sig(?P<sig>True|False))?(?P<rest>_.*)?$"
)

EXPECTED = (
    "expected a hub name `<namespace>_<model>_s<scale>_<pretrain_dataset>_globalbs<N>_lr<x>_b1_<x>_b2_<x>"
    "_sched_<cosine|const|const-cooldown>_warmup<N>_gpus<N>` or a training-log name `<dataset>_s<scale>_bs_<N>"
    "_[<namespace>_]<model>_ep<N>_lr<x>_b1_<x>_b2_<x>_...`, namespace one of " + ", ".join(NAMESPACES)
)


class RunNameError(UserError, ValueError):
    """A run name in neither of the paper's layouts; the message says what was expected."""


@dataclass
class RunInfo:
    """What the paper's grid records about one training run."""

    run: str                               # the full name (folder name)
    namespace: str                         # clip | mammut | coca | cap | siglip
    model_simple: str                      # ViT-B-32
    arch: str                              # open_clip / evalkit architecture: ViT-B-32, mammut_ViT-B-32
    pretrain_dataset: str | None = None
    lr_scheduler: str | None = None
    global_batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None
    total_samples: int | float | None = None
    total_epochs: int | None = None
    samples_seen_scale_pretty: str | None = None
    layout: str = "hub"                    # hub | log | table
    gpus: int | None = None
    # samples_seen per epoch as a metadata table states it (wins over total x k / total_epochs)
    samples_seen_at: dict[int, float] = field(default_factory=dict)

    def samples_seen(self, epoch: int | None) -> int | float | None:
        """Samples seen at the end of `epoch`: total x epoch / total_epochs, exact (an int when whole)."""
        if epoch is None:
            return None
        if epoch in self.samples_seen_at:
            return self.samples_seen_at[epoch]
        if self.total_samples is None or not self.total_epochs:
            return None
        q = Fraction(int(self.total_samples) if float(self.total_samples).is_integer() else self.total_samples) \
            * epoch / self.total_epochs
        return int(q) if q.denominator == 1 else float(q)


def scale_samples(scale: str) -> int | float:
    """Exact training samples of a `s<scale>` token: the paper's table for its scales, else literal."""
    scale = scale.strip()
    if scale in TOTAL_SAMPLES:
        return TOTAL_SAMPLES[scale]
    mult = {"K": 10**3, "k": 10**3, "M": 10**6, "B": 10**9}.get(scale[-1:], 1)
    number = scale[:-1] if mult != 1 else scale
    value = Fraction(number) * mult
    return int(value) if value.denominator == 1 else float(value)


def pretty_scale(scale: str) -> str:
    return scale[:-1] + "K" if scale.endswith("k") else scale


def arch_for(namespace: str, model_simple: str) -> str:
    return _ARCH_OF.get(namespace, "{m}").format(m=model_simple)


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _schedule_of_log_name(name: str) -> str:
    """Training-log names carry no schedule token for open_clip's default (cosine)."""
    low = name.lower()
    if "const-cooldown" in low or "const_cooldown" in low or "constcooldown" in low:
        return "const-cooldown"
    if re.search(r"(^|_)(const|constant)(_|$)", low) or "lrs_const" in low or "sched_const" in low:
        return "const"
    return "cosine"


def parse_run_name(name: str) -> RunInfo:
    """A `RunInfo` from a run's folder name in either layout; `RunNameError` saying what was expected."""
    m = HUB_RE.match(name)
    if m:
        ns, model, scale = m["namespace"], m["model"], m["scale"]
        return RunInfo(
            run=name, namespace=ns, model_simple=model, arch=arch_for(ns, model), pretrain_dataset=m["dataset"],
            lr_scheduler=m["sched"], global_batch_size=int(m["gbs"]), lr=_float(m["lr"]), warmup=int(m["warmup"]),
            total_samples=scale_samples(scale), total_epochs=None, samples_seen_scale_pretty=pretty_scale(scale),
            layout="hub", gpus=int(m["gpus"]),
        )
    m = LOG_RE.match(name)
    if m and m["model"]:
        ns = m["namespace"] or ("siglip" if m["sig"] == "True" else "clip")
        model, scale = m["model"], m["scale"]
        dataset = DATASET_ALIASES.get(m["dataset"], m["dataset"])
        warmup = m["warmup"] or m["warmup0"]
        return RunInfo(
            run=name, namespace=ns, model_simple=model, arch=arch_for(ns, model), pretrain_dataset=dataset,
            lr_scheduler=_schedule_of_log_name(name), global_batch_size=int(m["gbs"]), lr=_float(m["lr"]),
            warmup=int(warmup) if warmup else None, total_samples=scale_samples(scale),
            total_epochs=int(m["epochs"]), samples_seen_scale_pretty=pretty_scale(scale), layout="log",
            gpus=int(m["gpus"]) if m["gpus"] else None,
        )
    raise RunNameError(f"run name '{name}' is not one of the paper's layouts: {EXPECTED}.")


# ---------------------------------------------------------------------------------------------
# The metadata table (the hub repo's results.parquet, stored as <root>/cache/results.parquet)

META_COLUMNS = ("full_name", "name", "namespace", "model_simple", "model", "pretrain_dataset", "lr_scheduler",
                "samples_seen_scale_pretty", "epoch", "total_epochs", "samples_seen", "samples_seen_per_epoch",
                "global_batch_size", "lr", "warmup", "gpus")


@dataclass
class MetadataTable:
    """Run-level facts of a results.parquet, keyed by full name (`full_name`, else `name`)."""

    path: Path
    runs: dict[str, dict[str, Any]]

    def get(self, name: str) -> dict[str, Any] | None:
        return self.runs.get(name)


_META_CACHE: dict[tuple[str, float], MetadataTable] = {}


def metadata_path(root: Path) -> Path:
    return Path(root) / "cache" / "results.parquet"


def read_metadata(path: str | Path) -> MetadataTable:
    """Read the columns evalkit needs from a results.parquet (one row per run, epoch and downstream set)."""
    import pyarrow.parquet as pq

    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime)
    if key in _META_CACHE:
        return _META_CACHE[key]
    names = set(pq.read_schema(path).names)
    cols = [c for c in META_COLUMNS if c in names]
    id_col = "full_name" if "full_name" in names else "name" if "name" in names else None
    if id_col is None:
        raise UsageError(f"{path}: a metadata table needs a `full_name` (or `name`) column; it has {sorted(names)}.")
    frame = pq.read_table(path, columns=cols).to_pandas()
    runs: dict[str, dict[str, Any]] = {}
    for full_name, g in frame.groupby(id_col, sort=False):
        first = g.iloc[0]
        entry: dict[str, Any] = {c: _clean(first[c]) for c in cols if c not in ("epoch", "samples_seen")}
        if "epoch" in g and "samples_seen" in g:
            entry["samples_seen_at"] = {int(e): _clean(s) for e, s in zip(g["epoch"], g["samples_seen"])
                                        if _clean(e) is not None and _clean(s) is not None}
        if "epoch" in g:
            entry["epochs"] = sorted({int(e) for e in g["epoch"] if _clean(e) is not None})
        runs[str(full_name)] = entry
    table = MetadataTable(path, runs)
    _META_CACHE[key] = table
    return table


def _clean(v: Any) -> Any:
    """A table cell as a plain Python value; missing (None, NaN, NA) as None, whole floats as ints."""
    import pandas as pd

    if v is None or (not isinstance(v, (str, bytes)) and pd.api.types.is_scalar(v) and pd.isna(v)):
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


_COMPARED = ("namespace", "model_simple", "pretrain_dataset", "lr_scheduler", "samples_seen_scale_pretty",
             "total_epochs", "global_batch_size")


def info_from_metadata(name: str, entry: dict[str, Any], table: Path,
                       parsed: RunInfo | None) -> tuple[RunInfo, list[str]]:
    """The run as the metadata table has it (the name fills what the table lacks), and warnings for
    every fact where the table and the name disagree (naming both; the table wins)."""
    warnings: list[str] = []
    ns = entry.get("namespace") or (parsed.namespace if parsed else None)
    ms = entry.get("model_simple") or (parsed.model_simple if parsed else None)
    model = entry.get("model")
    if ns is None or ms is None:
        raise RunNameError(f"{table}: the row of '{name}' has no namespace/model_simple and the name does not "
                           f"parse: {EXPECTED}.")
    arch = model if isinstance(model, str) and model else arch_for(ns, ms)
    total_epochs = entry.get("total_epochs") or (parsed.total_epochs if parsed else None)
    per_epoch = entry.get("samples_seen_per_epoch")
    pretty = entry.get("samples_seen_scale_pretty") or (parsed.samples_seen_scale_pretty if parsed else None)
    if per_epoch is not None and total_epochs:
        total = per_epoch * int(total_epochs)
    elif entry.get("samples_seen_at") and total_epochs and int(total_epochs) in entry["samples_seen_at"]:
        total = entry["samples_seen_at"][int(total_epochs)]
    elif pretty:
        total = scale_samples(str(pretty))
    else:
        total = parsed.total_samples if parsed else None
    info = RunInfo(
        run=name, namespace=str(ns), model_simple=str(ms), arch=str(arch),
        pretrain_dataset=entry.get("pretrain_dataset") or (parsed.pretrain_dataset if parsed else None),
        lr_scheduler=entry.get("lr_scheduler") or (parsed.lr_scheduler if parsed else None),
        global_batch_size=entry.get("global_batch_size") or (parsed.global_batch_size if parsed else None),
        lr=entry.get("lr") if entry.get("lr") is not None else (parsed.lr if parsed else None),
        warmup=entry.get("warmup") if entry.get("warmup") is not None else (parsed.warmup if parsed else None),
        total_samples=total, total_epochs=int(total_epochs) if total_epochs else None,
        samples_seen_scale_pretty=str(pretty) if pretty else None, layout="table",
        gpus=entry.get("gpus") or (parsed.gpus if parsed else None),
        samples_seen_at=dict(entry.get("samples_seen_at") or {}),
    )
    if parsed is not None:
        for k in _COMPARED:
            a, b = getattr(parsed, k), getattr(info, k)
            if a is not None and b is not None and str(a) != str(b):
                warnings.append(f"{name}: the name says {k}={a}, the metadata table {table} says {k}={b}; "
                                "using the table's")
    return info, warnings


# ---------------------------------------------------------------------------------------------
# Selection: --where and --epochs

WHERE_KEYS = ("namespace", "model_simple", "arch", "pretrain_dataset", "samples_seen_scale_pretty", "lr_scheduler",
              "total_epochs", "global_batch_size", "run")


def parse_where(text: str | dict | None) -> dict[str, set[str]]:
    """`key=v1|v2,key2=v3` -> {key: {v1, v2}, key2: {v3}}; an unknown key is an error listing the keys."""
    if not text:
        return {}
    if isinstance(text, dict):
        return text
    out: dict[str, set[str]] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise UsageError(f"--where '{part}': expected key=value[|value...]; keys: {', '.join(WHERE_KEYS)}.")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in WHERE_KEYS:
            raise UsageError(f"--where: unknown key '{k}'; keys: {', '.join(WHERE_KEYS)}.")
        values = {x.strip() for x in v.split("|") if x.strip()}
        if not values:
            raise UsageError(f"--where '{part}': no value for {k}.")
        out.setdefault(k, set()).update(values)
    return out


def parse_epochs(text: str | None) -> str | set[int] | None:
    """`all` (or nothing) -> None, `last` -> "last", `1,5,10` -> {1, 5, 10}."""
    if text is None or str(text).strip() in ("", "all"):
        return None
    if isinstance(text, set):
        return text
    text = str(text).strip()
    if text == "last":
        return "last"
    try:
        epochs = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise UsageError(f"--epochs '{text}': expected last, all, or epoch numbers like 1,5,10.") from None
    if not epochs or min(epochs) < 0:
        raise UsageError(f"--epochs '{text}': expected last, all, or epoch numbers like 1,5,10.")
    return epochs


def matches_where(values: dict[str, Any], where: dict[str, set[str]]) -> bool:
    return all(values.get(k) is not None and str(values[k]) in allowed for k, allowed in where.items())
