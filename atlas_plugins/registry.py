"""The plugin registry: built-ins plus ``atlas.plugins`` entry points, looked up by name.

A :class:`Registry` owns one pluggy ``PluginManager``.  Building one loads the
built-in plugins (the one place the core imports ``builtin_plugins``), then every
entry point in the ``atlas.plugins`` group (unless
``ATLAS_DISABLE_PLUGIN_AUTOLOAD=1``), and asks each plugin to ``register`` its
losses, schedules, teachers, students and loggers.  A plugin that fails to import is
reported as a warning and remembered, so asking for one of its names explains
why it is missing; the other plugins keep working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from typing import Any, Callable

import attrs
import pluggy

from . import hookspecs
from .errors import DuplicatePluginError, PluginError, UnknownPluginError, did_you_mean

ENTRY_POINT_GROUP = "atlas.plugins"
KINDS = ("loss", "schedule", "teacher", "student", "logger")
_HOOKS = {"loss": "register_losses", "schedule": "register_schedules",
          "teacher": "register_teachers", "student": "register_students", "logger": "register_loggers"}
_PLURAL = {"loss": "losses", "schedule": "schedules", "teacher": "teachers", "student": "students",
           "logger": "loggers"}


class PluginLoadWarning(UserWarning):
    """A third-party plugin could not be loaded; the others still work."""


@attrs.frozen
class PluginInfo:
    """One registered object: what ``available()`` lists."""

    kind: str
    name: str
    obj: Any = attrs.field(repr=False)
    description: str
    plugin: str
    distribution: str
    version: str | None


@attrs.frozen
class LoadFailure:
    """A plugin (entry point or hook call) that failed, and why."""

    plugin: str
    distribution: str
    version: str | None
    error: str

    def describe(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"plugin '{self.plugin}' from distribution '{self.distribution}{version}' failed to load: {self.error}"


def _own_version() -> str | None:
    try:
        return importlib.metadata.version("atlas-distill")
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind '{kind}'{did_you_mean(kind, KINDS)}; kinds are: {', '.join(KINDS)}")


class Registry:
    """Every loss, schedule, teacher, student and logger known to this process, by name.

    ``Registry()`` is a factory call: each one is independent, so tests build
    fresh ones instead of resetting global state.
    """

    def __init__(self, load_entrypoints: bool | None = None):
        self.pm = pluggy.PluginManager("atlas")
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[LoadFailure] = []
        self._entries: dict[str, dict[str, PluginInfo]] = {k: {} for k in KINDS}
        self._conflicts: dict[str, dict[str, list[PluginInfo]]] = {k: {} for k in KINDS}
        if load_entrypoints is None:
            load_entrypoints = os.environ.get("ATLAS_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
        import builtin_plugins  # the single place the core loads the defaults (here: they import atlas_plugins)

        self.add_plugin(builtin_plugins, name="builtin", distribution="atlas-distill", version=_own_version())
        if load_entrypoints:
            self._load_entrypoints()

    # -- loading -------------------------------------------------------------
    def _load_entrypoints(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else None
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not break the others
                self._fail(LoadFailure(ep.name, dist, version, f"{type(exc).__name__}: {exc}"))
                continue
            if self.pm.is_registered(plugin):
                continue
            name = ep.name if self.pm.get_plugin(ep.name) is None else f"{dist}:{ep.name}"
            try:
                self.add_plugin(plugin, name=name, distribution=dist, version=version)
            except PluginError as exc:  # an invalid plugin is reported like one that fails to import
                self._fail(LoadFailure(name, dist, version, str(exc)))

    def _fail(self, failure: LoadFailure) -> None:
        self.failures.append(failure)
        warnings.warn(f"atlas: {failure.describe()}", PluginLoadWarning, stacklevel=3)

    def add_plugin(self, plugin: Any, name: str | None = None,
                   distribution: str = "__main__", version: str | None = None) -> None:
        """Register an object holding ``@hookimpl`` functions and collect what it registers.

        A hook function whose name is not one of the hook specs (a typo such as
        ``register_loss``) or whose arguments differ, or a registration with a bad name
        or a non-callable object, raises :class:`PluginError`.  A hook that raises is
        reported as a warning.  Either way none of the plugin's names is registered.
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            hooks = ", ".join(_HOOKS.values())
            raise PluginError(f"plugin '{name}' from distribution '{distribution}' is invalid: {exc} "
                              f"(valid hooks: {hooks})") from None
        staged: list[PluginInfo] = []
        for kind, hook in _HOOKS.items():
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    impl.function(register=self._registrar(kind, name, distribution, version, staged.append))
                except PluginError:
                    self.pm.unregister(plugin)
                    raise
                except (Exception, SystemExit) as exc:
                    self.pm.unregister(plugin)
                    self._fail(LoadFailure(name, distribution, version,
                                           f"{hook}() raised {type(exc).__name__}: {exc}"))
                    return
        for info in staged:
            self._add(info)

    def _registrar(self, kind: str, plugin: str, distribution: str, version: str | None,
                   collect: Callable[[PluginInfo], None]) -> Callable:
        def register(name: str, obj: Any, description: str = "") -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin '{plugin}' ({distribution}) registered a {kind} with an invalid name "
                                  f"{name!r}; names must be non-empty strings")
            if not callable(obj):
                raise PluginError(f"plugin '{plugin}' ({distribution}) registered {kind} '{name}' as {obj!r}, "
                                  "which is not callable")
            text = str(description or getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            collect(PluginInfo(kind, name, obj, text, plugin, distribution, version))
        return register

    def _add(self, info: PluginInfo) -> None:
        entries = self._entries[info.kind]
        old = entries.get(info.name)
        if old is not None and old.plugin != info.plugin:
            self._conflicts[info.kind].setdefault(info.name, [old]).append(info)
            warnings.warn(f"atlas: {self._conflict_message(info.kind, info.name)}", PluginLoadWarning, stacklevel=4)
            return
        entries[info.name] = info

    def _conflict_message(self, kind: str, name: str) -> str:
        who = " and ".join(f"plugin '{i.plugin}' (distribution '{i.distribution}')"
                           for i in self._conflicts[kind][name])
        return (f"{kind} '{name}' is registered twice, by {who}; "
                "uninstall one of them or set ATLAS_DISABLE_PLUGIN_AUTOLOAD=1")

    # -- in-process registration ----------------------------------------------
    def register(self, kind: str, name: str, obj: Any = None, description: str = ""):
        """Register ``obj`` as a ``kind`` named ``name`` from this process (``__main__``).

        Usable as a decorator: ``@registry.register("loss", "my-loss")``.
        Registering the same name again from ``__main__`` replaces it; a name
        that a plugin package already provides is a :class:`DuplicatePluginError`.
        """
        _check_kind(kind)
        if obj is None:
            return lambda fn: self.register(kind, name, fn, description) or fn
        old = self._entries[kind].get(name)
        if old is not None and old.plugin != "__main__":
            raise DuplicatePluginError(f"{kind} '{name}' is already provided by plugin '{old.plugin}' "
                                       f"(distribution '{old.distribution}'); choose another name")
        self._registrar(kind, "__main__", "__main__", None, self._add)(name, obj, description)
        return None

    # -- lookup --------------------------------------------------------------
    def get(self, kind: str, name: str) -> Any:
        """Return the object registered as ``kind`` ``name``, or raise a helpful error."""
        return self.info(kind, name).obj

    def info(self, kind: str, name: str) -> PluginInfo:
        _check_kind(kind)
        if name in self._conflicts[kind]:
            raise DuplicatePluginError(self._conflict_message(kind, name))
        try:
            return self._entries[kind][name]
        except (KeyError, TypeError):
            pass
        names = sorted(self._entries[kind])
        msg = (f"unknown {kind} '{name}'{did_you_mean(name, names)}; "
               f"available {_PLURAL[kind]}: {', '.join(names) or 'none'}")
        if self.failures:
            msg += "; note: " + "; ".join(f.describe() for f in self.failures)
        raise UnknownPluginError(msg)

    def names(self, kind: str) -> list[str]:
        _check_kind(kind)
        return sorted(self._entries[kind])

    def available(self, kind: str | None = None) -> list[PluginInfo]:
        """Every registered object (of one kind, or all), sorted by kind then name."""
        kinds = KINDS if kind is None else (kind,)
        for k in kinds:
            _check_kind(k)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use (not at import)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_registry() -> None:
    """Forget the process-wide registry, e.g. after installing a plugin package."""
    global _default
    _default = None
