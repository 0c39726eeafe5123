"""Built-in temperature schedules: stage -> τ.

With p = stage / max(1, num_stages − 1):
linear  τ = start − (start − end)·p;
exponential τ = start·(end/start)^p;
cosine  τ = start − (start − end)·(1 − cos(πp))/2.
"""

from __future__ import annotations

import math
import numbers

import attrs

from atlas_plugins.checks import check_tau
from atlas_plugins.errors import ConfigError


@attrs.frozen
class Schedule:
    """A callable ``stage -> tau`` for stages ``0 .. num_stages - 1``."""

    kind: str
    start: float
    end: float
    num_stages: int

    def __call__(self, stage) -> float:
        if isinstance(stage, bool) or not isinstance(stage, numbers.Integral) or not 0 <= stage < self.num_stages:
            raise ConfigError(f"stage must be an integer in [0, {self.num_stages - 1}], got {stage!r}")
        p = int(stage) / max(1, self.num_stages - 1)
        if self.kind == "linear":
            return self.start - (self.start - self.end) * p
        if self.kind == "exponential":
            return self.start * (self.end / self.start) ** p
        return self.start - (self.start - self.end) * (1.0 - math.cos(math.pi * p)) / 2.0


def _make(kind: str, start, end, num_stages) -> Schedule:
    try:
        start, end = check_tau(start), check_tau(end)
    except ConfigError as exc:
        raise ConfigError(f"schedule start and end {exc.args[0].removeprefix('tau ')}") from None
    if isinstance(num_stages, bool) or not isinstance(num_stages, numbers.Integral) or num_stages < 1:
        raise ConfigError(f"num_stages must be an integer >= 1, got {num_stages!r}")
    return Schedule(kind, start, end, int(num_stages))


def linear(start, end, num_stages):
    """τ falls linearly from start to end."""
    return _make("linear", start, end, num_stages)


def exponential(start, end, num_stages):
    """τ falls geometrically: equal ratios between stages."""
    return _make("exponential", start, end, num_stages)


def cosine(start, end, num_stages):
    """τ follows half a cosine: slow at both ends, fast in the middle."""
    return _make("cosine", start, end, num_stages)
