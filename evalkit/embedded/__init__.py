"""evalkit.embedded: the embedded demo world (tiny shapes datasets, a micro grid of trained models).

A plug-in: evalkit/data and evalkit/models never import it. Importing it registers what it provides
with evalkit/data/roots.py: the `embedded:PATH` data-root scheme (tasks' `default_root`, resolved under
the committed data folder) and the `${EVALKIT_EMBEDDED_HOME}` path variable (the zoo's entries for the
trained micro grid). The entry point `evalkit.plugins: embedded` (pyproject.toml) names this package, so the first lookup of
either imports it.
"""

from __future__ import annotations

from evalkit.data.roots import register_path_variable, register_root_scheme
from evalkit.embedded import paths as _paths

register_root_scheme("embedded", lambda rest: _paths.data_root() / rest)
register_path_variable(_paths.ENV_HOME, _paths.embedded_home)
