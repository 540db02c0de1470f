"""Build hook only (all metadata is in pyproject.toml): ship the top-level registries inside the package.

`tasks/*.yaml` and `checkpoints.yaml` stay at the repository's top level (where users edit them); a
wheel or a non-editable install carries verbatim copies as `evalkit/_registry/tasks/*.yaml` and
`evalkit/_registry/checkpoints.yaml`, which `evalkit.tasks.loader.task_dirs` and
`evalkit.grids.zoo.zoo_path` fall back to when there is no source tree. An editable install reads the
source tree and gets no copies. The sdist carries the originals, so a wheel built from it has them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = Path("evalkit") / "_registry"  # inside the package, in build_lib / the wheel


def registry_files() -> list[Path]:
    """The top-level registry files, relative to the repository root."""
    files = [Path("checkpoints.yaml"), *sorted(p.relative_to(ROOT) for p in (ROOT / "tasks").glob("*.yaml"))]
    missing = [str(f) for f in files if not (ROOT / f).is_file()]
    if missing or len(files) < 2:
        raise FileNotFoundError(f"evalkit build: registry files missing under {ROOT}: {missing or 'tasks/*.yaml'}")
    return files


class BuildPyWithRegistry(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install finds tasks/ and checkpoints.yaml in the source tree
            return
        shutil.rmtree(Path(self.build_lib) / SHIPPED, ignore_errors=True)  # no stale copy of a removed task
        for rel in registry_files():
            dest = Path(self.build_lib) / SHIPPED / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, dest)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(Path(self.build_lib) / SHIPPED / rel) for rel in registry_files()]

    def get_source_files(self) -> list[str]:  # what the sdist takes from build_py
        return super().get_source_files() + [str(rel) for rel in registry_files()]


setup(cmdclass={"build_py": BuildPyWithRegistry})
