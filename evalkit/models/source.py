"""The one parser of model sources: what a `--model` / `--pretrained` / zoo `weights:` string names.

    hf-hub:ORG/REPO                        a hub repo in open_clip's layout (config + weights)
    hf-hub-file:ORG/REPO[@REV]:PATH        one checkpoint file of a hub repo (hub grids, hub_grid.py)
    local-dir:DIR                          a folder in the hub layout
    PATH.json                              an open_clip model-config JSON
    PATH (exists, has a '/', or ends .pt/.pth/.bin/.safetensors)   a weights file
    NAME                                   anything else: a zoo name, an architecture or a pretrained tag

Syntax only: nothing is read here (and no torch), so the CLI and the zoo can call it cheaply. Which
NAME it is (zoo entry, evalkit/open_clip architecture, open_clip tag) depends on where it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HF_HUB = "hf-hub"
HF_HUB_FILE = "hf-hub-file"
LOCAL_DIR = "local-dir"
CONFIG = "config"
FILE = "file"
NAME = "name"

# Prefixed kinds, longest first ("hf-hub-file:" before "hf-hub:").
PREFIXES = (HF_HUB_FILE, HF_HUB, LOCAL_DIR)
WEIGHT_SUFFIXES = (".pt", ".bin", ".pth", ".safetensors")


@dataclass(frozen=True)
class ModelSource:
    """`kind` (one of the constants above) and `value`: the string without its `kind:` prefix (a repo id,
    a folder, a path, a name); `raw` is the string as given."""

    kind: str
    value: str
    raw: str

    @property
    def includes_weights(self) -> bool:
        """A source that carries config and weights together (hub repo, local dir): no `pretrained` needed."""
        return self.kind in (HF_HUB, LOCAL_DIR)

    @property
    def path(self) -> Path:
        """`value` as a local path (local-dir, config and file kinds)."""
        return Path(self.value).expanduser()


def parse_source(text: str) -> ModelSource:
    """What `text` names (see the module docstring). Never fails: an unknown NAME is found out later."""
    text = str(text)
    for kind in PREFIXES:
        if text.startswith(kind + ":"):
            return ModelSource(kind, text[len(kind) + 1:], text)
    if text.endswith(".json"):
        return ModelSource(CONFIG, text, text)
    path = Path(text).expanduser()
    if "/" in text or path.suffix in WEIGHT_SUFFIXES or path.exists():
        return ModelSource(FILE, text, text)
    return ModelSource(NAME, text, text)
