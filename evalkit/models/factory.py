"""From a `ModelSpec` to a `LoadedModel`: resolve the source, pick the family, build, load safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evalkit.errors import UsageError
from evalkit.models import source as src
from evalkit.models.checkpoint import CheckpointError, load_into, read_state_dict
from evalkit.models.configs import ModelNotFound, get_arch_config, read_config_file
from evalkit.models.family import LoadedModel, ModelFamily, PreprocessCfg, family_for, get_family
from evalkit.models.hub import read_dir_layout, resolve_hub
from evalkit.models.spec import ModelSpec, check_preprocess


def _size(cfg: dict[str, Any]) -> int:
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise UsageError(f"non-square image_size {size} is not supported")
        size = size[0]
    return int(size)


def _preprocess(cfg: dict[str, Any], overrides: dict[str, Any], family: dict[str, Any] | None = None,
                spec: dict[str, Any] | None = None) -> PreprocessCfg:
    """The image size of the config, then, each overriding the one before: the family's `preprocess`
    hook, the source's (hub `preprocess_cfg`, pretrained tag; mean/std/interpolation/resize_mode only)
    and the spec's (a zoo entry's `preprocess:`, any key of `PREPROCESS_KEYS`)."""
    kw: dict[str, Any] = {"size": _size(cfg)}
    for layer, keys in ((family or {}, ("size", "mean", "std", "interpolation", "resize_mode")),
                        (overrides, ("mean", "std", "interpolation", "resize_mode")),
                        (spec or {}, ("size", "mean", "std", "interpolation", "resize_mode"))):
        for key in keys:
            v = layer.get(key)
            if v is None or v == "":
                continue
            kw[key] = tuple(float(x) for x in v) if key in ("mean", "std") else int(v) if key == "size" else str(v)
    return PreprocessCfg(**kw)


def resolve_source(spec: ModelSpec, weights: Path | None = None) -> tuple[str, dict[str, Any], dict[str, Any], Path | None]:
    """(model name, model config, preprocess overrides, weights file or None) for a spec; `weights`, when
    given, is the spec's `pretrained` already fetched to a local file."""
    if spec.error:  # a grid checkpoint that cannot be built (unparseable name, unsupported namespace)
        raise ModelNotFound(spec.error)
    model = spec.model
    source = src.parse_source(model)
    if source.kind == src.HF_HUB:
        cfg, pp, weights = resolve_hub(source.value)
        return model, cfg, pp, weights
    if source.kind == src.LOCAL_DIR:
        cfg, pp, weights = read_dir_layout(source.path)
        return model, cfg, pp, weights
    if source.kind == src.CONFIG:
        if not source.path.is_file():
            raise ModelNotFound(f"{source.path}: model-config JSON not found.")
        name = Path(model).stem
        cfg = read_config_file(source.path)
        return name, cfg, {}, weights or _pretrained_file(name, spec.pretrained)
    if source.kind == src.HF_HUB_FILE:
        raise ModelNotFound(f"{model}: a checkpoint file, not a model; give it as pretrained with the architecture as model.")
    cfg = get_arch_config(spec.arch or model)  # a name (or a path that is not a config: said unknown there)
    return model, cfg, _tag_preprocess(model, spec.pretrained, cfg), weights or _pretrained_file(model, spec.pretrained)


def _tag_preprocess(arch: str, pretrained: str | None, cfg: dict[str, Any]) -> dict[str, Any]:
    if not pretrained or src.parse_source(pretrained).kind != src.NAME:  # a file: no tag to read
        return {}
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
    if tag_cfg.get("quick_gelu"):
        cfg["quick_gelu"] = True
    return {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}


def _pretrained_file(arch: str, pretrained: str | None) -> Path | None:
    if not pretrained:
        return None
    source = src.parse_source(pretrained)
    if source.kind == src.HF_HUB_FILE:  # a checkpoint file of a hub repo: its CheckpointSource fetches it
        raise CheckpointError(f"{pretrained}: a hub grid checkpoint; fetch it first (evalkit.grids.source."
                              "source_for(spec).fetch(spec)) and pass the file as `weights`.")
    if source.includes_weights:
        raise CheckpointError(f"{pretrained}: a model with its own weights, not a weights file: give it as the model.")
    if source.kind in (src.FILE, src.CONFIG):
        path = source.path
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file. Check the path (or glob) you gave.")
        return path
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not tag_cfg:
        tags = [t for a, t in open_clip.list_pretrained() if a == arch]
        raise ModelNotFound(
            f"'{pretrained}' is neither a file nor a pretrained tag of {arch}. Tags of {arch}: {', '.join(tags) or 'none'}."
        )
    try:
        return Path(open_clip.download_pretrained(tag_cfg))
    except Exception as e:
        raise ModelNotFound(
            f"{arch}:{pretrained}: weights not in the local cache and not downloadable here ({type(e).__name__}). "
            "Fetch them where the hub is reachable (the open_clip tag downloads into the HF cache) and copy the "
            "cache here, or pass --pretrained PATH."
        ) from None


_TOKENIZERS: dict[str, object] = {}


def _tokenizer(family, name: str, cfg: dict[str, Any]):
    """One tokenizer per (family, text config): building one reads the 49k-merge BPE file (~0.1 s),
    which across a grid of identical architectures would cost more than loading the weights."""
    import json

    key = json.dumps([family.name, cfg.get("text_cfg", {}), "hf-hub" if src.parse_source(name).kind == src.HF_HUB else ""],
                     sort_keys=True, default=str)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = family.tokenizer(name, cfg)
    return _TOKENIZERS[key]


def _release_memory(device: str | torch.device) -> None:
    """Collect what the previous model left and hand its cached CUDA blocks back, so an
    architecture change never holds two models on the device."""
    import gc

    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_model(spec: ModelSpec | str, pretrained: str | None = None, device: str | torch.device = "cpu",
               state: dict[str, torch.Tensor] | None = None, reuse: dict | None = None,
               weights: Path | None = None) -> LoadedModel:
    """Load any supported model source as a `LoadedModel` in eval mode on `device`.

    `weights` is the local file of `spec.pretrained` when a checkpoint source fetched it (a hub grid's
    download); `state` is the already-read state dict of the weights file (the engine reads the next checkpoint
    while the current one computes). `reuse` (the engine's, one model at a time) keeps the last built
    module per architecture and loads the next checkpoint of that architecture into it in place,
    skipping construction and random init; a caller holding the previous LoadedModel must not pass it.
    """
    if isinstance(spec, str):
        spec = ModelSpec(model=spec, pretrained=pretrained)
    name, cfg, pp, weights = resolve_source(spec, weights)
    if state is None and weights is not None:
        state = read_state_dict(weights)
    family: type[ModelFamily] = family_for(name, cfg, set(state) if state is not None else None)
    if spec.family and spec.family != family.name:
        try:
            family = get_family(spec.family)
        except ModelNotFound as e:
            raise ModelNotFound(f"{spec.name}: {e}") from None
    import json

    key = json.dumps([family.name, name, cfg, str(device)], sort_keys=True, default=str)
    if reuse is not None and state is not None and key in reuse:
        model = reuse[key]
    else:
        if reuse:  # another architecture: free the old module (host and device) before building this one
            reuse.clear()
            _release_memory(device)
        model = family.build(name, cfg)
        model.evalkit_arch = name  # type: ignore[attr-defined]
        if reuse is not None and state is not None:
            reuse[key] = model
    if state is not None:
        state = family.prepare_state_dict(model, state)
        load_into(model, state, weights)
    model.eval().to(device)
    spec_pp = check_preprocess(spec.preprocess, spec.name) if spec.preprocess else None
    return LoadedModel(
        model=model,
        family=family.name,
        arch=spec.arch or name,
        preprocess=_preprocess(cfg, pp, family.preprocess(name, cfg), spec_pp),
        tokenizer=_tokenizer(family, name, cfg),
        context_length=int(cfg.get("text_cfg", {}).get("context_length", 77)),
        text_pooling=family.text_pooling_for(model),
        model_cfg=cfg,
        source=str(weights) if weights is not None else spec.model,
    )
