"""Plugin parameters: values checked against the plugin's annotations before the plugin is called.

A value from a pipeline file or ``--set`` reaches a plugin only when it has the
annotated type, so the string ``"false"`` never turns on a ``trust: bool``:

- ``bool``: true or false only; ``int``: an integer (not a boolean); ``float``: any number;
  ``str``: a string; ``dict``: a table;
- ``list[X]``, ``Sequence[X]``, ``tuple[X, ...]``: a list whose items are X;
- ``X | None`` (``Optional[X]``), ``X | Y``: any of them; ``Literal["a", "b"]``: one of the values;
- ``Annotated[str, PluginRef("loss")]``: the name of a registered plugin of that kind; ``atlas-run``
  checks the name and hands the plugin the resolved object (see :class:`PluginRef`).

A parameter without an annotation, or with one not listed here, is passed as it is: annotate your
plugin's parameters so that ``atlas-run`` can check them for you.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Annotated, Any, Literal, Union

import attrs

_UNCHECKED = object()


@attrs.frozen
class PluginRef:
    """Marks a parameter that names another plugin: ``base: Annotated[str, PluginRef("loss")] = "relational"``.

    The pipeline file holds the name; ``atlas-run`` looks it up in the registry the
    pipeline was assembled with and passes the plugin's object (for a loss: the function).
    """

    kind: str


def signature_annotations(fn) -> dict[str, Any]:
    """``{parameter: annotation}`` of ``fn``, string annotations evaluated where possible."""
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception:  # an annotation that cannot be evaluated is left unchecked
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return {}
    return {name: (p.annotation if not isinstance(p.annotation, str) else _UNCHECKED)
            for name, p in sig.parameters.items() if p.annotation is not inspect.Parameter.empty}


def plugin_ref(annotation) -> PluginRef | None:
    """The :class:`PluginRef` in an ``Annotated[...]`` annotation (also inside ``X | None``), else ``None``."""
    if typing.get_origin(annotation) is Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, PluginRef)), None)
    if _is_union(annotation):
        return next((r for r in map(plugin_ref, typing.get_args(annotation)) if r is not None), None)
    return None


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def matches(value, annotation) -> bool:
    """Whether ``value`` (as read from TOML) has the type ``annotation`` describes."""
    if annotation is _UNCHECKED or annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return matches(value, args[0])
    if annotation is None or annotation is type(None):
        return value is None
    if _is_union(annotation):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[X, Y]: one type per position
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        return all(matches(v, item) for v in value)
    return True  # a type this checker does not know: the plugin checks it


def describe(annotation) -> str:
    """What ``annotation`` accepts, in words: ``"true or false"``, ``"a list of integers"``, ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        ref = plugin_ref(annotation)
        return f"a {ref.kind} name (a string)" if ref else describe(args[0])
    if annotation is None or annotation is type(None):
        return "none"
    if _is_union(annotation):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    if annotation in names:
        return names[annotation]
    if origin is dict:
        return "a table"
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        item = args[0] if args else Any
        inner = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(item)
        return f"a list of {inner}" if inner else "a list"
    return getattr(annotation, "__name__", str(annotation))


def literal_values(annotation) -> tuple:
    """The values a ``Literal`` in ``annotation`` allows (also inside ``Optional``/unions and ``Annotated``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return args
    if origin is Annotated or _is_union(annotation):
        return tuple(v for a in (args[:1] if origin is Annotated else args) for v in literal_values(a))
    return ()


def accepts(fn, name: str) -> bool:
    """Whether plugin ``fn`` takes a parameter called ``name`` (False when its signature cannot be read)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def parameters(fn, reserved=()) -> list[dict]:
    """The parameters a pipeline file may set for plugin ``fn`` (not ``reserved``, not ``*args``):
    ``[{"name", "default", "type"}]``, ``default`` None when there is none, ``type`` in words (or None)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    annotations = signature_annotations(fn)
    out = []
    for p in sig.parameters.values():
        if p.name in reserved or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        default = list(default) if isinstance(default, tuple) else default
        if not isinstance(default, (bool, int, float, str, list, type(None))):
            default = repr(default)
        out.append({"name": p.name, "default": default,
                    "type": describe(annotations[p.name]) if p.name in annotations else None})
    return out


def resolve_refs(fn, params: dict, registry) -> dict:
    """``params`` with each :class:`PluginRef` parameter's name replaced by the plugin ``registry`` holds."""
    out = dict(params)
    for key, annotation in signature_annotations(fn).items():
        ref = plugin_ref(annotation)
        if ref is not None and isinstance(out.get(key), str):
            out[key] = registry.get(ref.kind, out[key])
    return out
