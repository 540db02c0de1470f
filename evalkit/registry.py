"""One registry type for every kind of plug-in: protocols, model families, data formats, grid layouts,
checkpoint sources, data-root schemes and plug-in packages.

A registry is filled lazily on first use: its built-in modules are imported (each registers what it
defines), then the installed entry points of its group (`[project.entry-points."evalkit.<kind>"]`).
One policy for every kind:
- a name registered twice by *different* objects warns (`RegistrationWarning`) and the later one wins,
  so a plug-in can replace a built-in on purpose and nobody replaces one silently; the same object
  again (or a reloaded module's class of the same qualified name) is silent;
- an entry point that fails to import warns naming it and is skipped: a broken plug-in never takes
  evalkit down; a built-in module that fails to import is a bug and raises;
- an unknown name is a `RegistryError` (one line) listing the known names.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from evalkit.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")


class RegistrationWarning(UserWarning):
    """A name was registered twice by different objects (the later one is used)."""


class RegistryError(UserError, LookupError):
    """An unknown name asked of a registry."""


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class Registry(Mapping[str, T], Generic[T]):
    """Name -> plug-in, read-only as a Mapping; `register` adds (as a call or a decorator)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = (), group: str | None = None,
                 check: Callable[[str, Any], None] | None = None) -> None:
        self.kind = kind  # "protocol", "model family", ... (said in messages)
        self.modules = modules  # built-in modules, imported on first use
        self.group = group  # entry-point group, e.g. "evalkit.protocols"
        self._check = check  # raises TypeError/ValueError on an object that is not of this kind
        self._items: dict[str, T] = {}
        self._lock = threading.RLock()
        self._loaded = False
        self._loading = False

    # -- filling ------------------------------------------------------------------------------
    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: Any = None) -> Any:
        """`registry.register(name, obj)`, or `@registry.register(name)` on a class or function."""
        if obj is None:
            return lambda o: self.register(name, o)
        if not name:
            raise ValueError(f"{self.kind}: {_qualname(obj)} registers under an empty name")
        if self._check is not None:
            self._check(name, obj)
        with self._lock:
            old = self._items.get(name)
            if old is not None and old is not obj and _qualname(old) != _qualname(obj):
                warnings.warn(f"{self.kind} '{name}' registered twice: {_qualname(obj)} replaces {_qualname(old)}",
                              RegistrationWarning, stacklevel=3)
            self._items[name] = obj
        return obj

    def unregister(self, name: str) -> T | None:
        """Remove an entry (tests, a plug-in replacing one); returns it, or None."""
        with self._lock:
            return self._items.pop(name, None)

    def load(self) -> None:
        """Import the built-in modules, then the entry points, once (other threads wait; a module being
        imported may ask the registry again and sees what is registered so far)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for module in self.modules:
                    importlib.import_module(module)
                if self.group:
                    self._load_entry_points()
                self._loaded = True
            finally:
                self._loading = False

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        try:
            eps = list(entry_points(group=self.group))
        except Exception as e:  # a broken installed distribution must not take evalkit down
            log.warning("evalkit: warning: cannot read the %s entry points (%s: %s)", self.group, type(e).__name__, e)
            return
        for ep in eps:
            try:
                obj = ep.load()
            except Exception as e:
                log.warning("evalkit: warning: %s plug-in %s = %s failed to import (%s: %s); skipped",
                            self.kind, ep.name, ep.value, type(e).__name__, e)
                continue
            # an entry point names either a module that registers itself or the object to register
            if not _is_module(obj) and self._items.get(ep.name) is not obj:
                try:
                    self.register(ep.name, obj)
                except (TypeError, ValueError) as e:
                    log.warning("evalkit: warning: %s plug-in %s = %s is not a %s (%s); skipped",
                                self.kind, ep.name, ep.value, self.kind, e)

    @contextlib.contextmanager
    def preserved(self) -> Iterator[Registry[T]]:
        """Within the block, registrations and removals are undone on exit (tests, trial plug-ins)."""
        self.load()
        with self._lock:
            saved = dict(self._items)
        try:
            yield self
        finally:
            with self._lock:
                self._items.clear()
                self._items.update(saved)

    def rescan(self) -> None:
        """Read the entry points again (a package installed since the first use)."""
        self.load()
        if self.group:
            with self._lock:
                self._load_entry_points()

    # -- reading ------------------------------------------------------------------------------
    def get(self, name: str, default: Any = None) -> Any:  # Mapping.get: no error
        self.load()
        return self._items.get(name, default)

    def lookup(self, name: str) -> T:
        """The entry `name`; unknown: a RegistryError naming the known ones."""
        self.load()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self._items)) or 'none'})") \
                from None

    def __getitem__(self, name: str) -> T:
        self.load()
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(dict(self._items))

    def __len__(self) -> int:
        self.load()
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {sorted(self._items)})"


def _is_module(obj: Any) -> bool:
    import types

    return isinstance(obj, types.ModuleType)
