"""The toolkit's errors: one small hierarchy under :class:`AtlasError`.

Every message is meant for a person: it names the file, key or argument at
fault, says what was expected, and where possible what to do next.  The CLI
prints ``AtlasError`` messages as one line and exits with code 2 (``1`` for
:class:`TrainingError`, which is a run going wrong rather than bad input).
"""

from __future__ import annotations

import difflib


class AtlasError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = 2


class ConfigError(AtlasError, ValueError):
    """A configuration value (TOML key, ``--set`` override, argument) is wrong."""


class DataError(AtlasError, ValueError):
    """Teacher data is unreadable or not what the configuration expects."""


class PluginError(AtlasError):
    """A plugin failed to load, or returned something it should not."""


class UnknownPluginError(PluginError, KeyError):
    """No plugin of that kind is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name under one kind."""


class CheckpointError(AtlasError):
    """A checkpoint or student file is missing, corrupt or unsafe to load."""


class RunDirError(AtlasError):
    """The output folder is locked by another run, or already holds a run."""


class WriteError(AtlasError):
    """A file could not be written (a full disk, no permission); what was written before is intact."""

    exit_code = 1


class TrainingError(AtlasError):
    """Training went wrong (for example, the loss became NaN)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``"TypeName: the first line of its message"`` (at most ``limit`` characters of it), or ``"TypeName"``
    when the message is empty: how a library's exception is quoted inside one of our one-line messages."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__


def did_you_mean(name: str, choices) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
