"""A trained student on disk: ``student.pt`` and :func:`load_student`.

``student.pt`` holds only weights-only-safe values: the student plugin's
name, the parameters it was built with and its ``state_dict``.  Loading
rebuilds the module through the registry, so a third-party student loads the
same way as a built-in one.  ``map.pt`` beside it (see :mod:`atlas_plugins.refine`)
lets ``encode(x, refine=N)`` place new points against the training map.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from .checkpoint import atomic_save, safe_load
from .errors import CheckpointError, ConfigError, PluginError
from .refine import REFINE_BLOCK, TrainingMap, refine as refine_points
from .registry import get_registry

STUDENT_FORMAT = "atlas-student/1"


@attrs.define
class TrainedStudent:
    """A student module with the plugin name and parameters that rebuild it.

    ``training_map`` (or ``map_path``, read on first use) is what ``encode(x, refine=N)`` needs.
    """

    module: torch.nn.Module
    plugin: str
    params: dict = attrs.field(factory=dict)
    input_dim: int = 0
    dim: int = 0
    training_map: TrainingMap | None = None
    map_path: Path | None = None

    @torch.inference_mode()
    def encode(self, x, batch_size: int = 65536, precision: str = "float32", refine: int = 0, seed: int = 0):
        """Map teacher vectors ``(N, Dt)`` to student vectors ``(N, Ds)`` in batches.

        Accepts a tensor or a (possibly memory-mapped) NumPy array; returns a
        CPU float32 tensor, or a tuple of them for a multi-level student.
        ``precision="bfloat16"`` runs the student in bfloat16 (about twice as
        fast on CPUs with bf16 matrix units; coordinates differ by ~1e-2).
        ``refine=N`` then moves each point N epochs against the frozen training
        map (:func:`atlas_plugins.refine.refine`; needs ``map.pt``): slower, and
        closer to the teacher's neighbourhoods.  Same ``x``, ``seed`` and
        ``batch_size``: same result.
        """
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"encode expects shape (N, {self.input_dim}), got {tuple(x.shape)}")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
            raise ConfigError(f"refine must be a number of epochs (an integer >= 0), got {refine!r}")
        if refine:
            training_map = self.load_map()
            batch_size = min(batch_size, REFINE_BLOCK)
        dtype = getattr(torch, precision)
        self.module.eval()
        device = next(self.module.parameters()).device
        module = self.module if dtype == torch.float32 else copy.deepcopy(self.module).to(dtype)
        generator = torch.Generator().manual_seed(seed)
        outs: list = []
        for start in range(0, x.shape[0], batch_size):
            block = x[start:start + batch_size]
            block = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block, dtype=np.float32))
            block = block.to(device=device, dtype=dtype)
            z = module(block)
            z = tuple(z) if isinstance(z, (tuple, list)) else (z,)
            if refine:
                z = refine_points(training_map, block.float(), tuple(v.float() for v in z), epochs=refine,
                                  generator=generator)
            outs.append(z)
        levels = [torch.cat([o[i] for o in outs]).float().cpu() for i in range(len(outs[0]))] if outs else []
        return levels[0] if len(levels) == 1 else tuple(levels)

    def load_map(self) -> TrainingMap:
        """The training map: ``training_map``, else read from ``map_path`` (once); a clear error without one."""
        if self.training_map is None:
            if self.map_path is None or not Path(self.map_path).exists():
                where = f"{self.map_path} does not exist" if self.map_path else "this student has none"
                raise CheckpointError(
                    f"refine needs the training map, and {where}: atlas-run writes map.pt beside student.pt "
                    "(unless output.map_rows = 0) and load_student() finds it there; use refine=0 for the "
                    "student alone")
            training_map = TrainingMap.load(self.map_path)
            if training_map.vectors.shape[1] != self.input_dim:
                raise CheckpointError(f"{self.map_path}: the map holds {training_map.vectors.shape[1]}-D teacher "
                                      f"vectors, the student expects {self.input_dim}-D: it belongs to another run")
            self.training_map = training_map
        return self.training_map

    def save(self, path) -> None:
        """Write ``student.pt`` atomically."""
        atomic_save({"format": STUDENT_FORMAT, "plugin": self.plugin, "params": self.params,
                     "input_dim": self.input_dim, "dim": self.dim,
                     "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}}, path)


def load_student(path, registry=None) -> TrainedStudent:
    """Rebuild a student from ``student.pt``, or a run folder holding one (loaded with ``weights_only=True``).

    ``map.pt`` beside it, when there, is read on the first ``encode(..., refine=N)``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "student.pt"
    blob = safe_load(path, what="student file")
    if not isinstance(blob, dict) or blob.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{path}: not an atlas student file (expected format '{STUDENT_FORMAT}')")
    registry = registry or get_registry()
    factory = registry.get("student", blob["plugin"])
    module = factory(blob["input_dim"], blob["dim"], **blob["params"])
    try:
        module.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise PluginError(f"{path}: student '{blob['plugin']}' no longer matches the saved weights: "
                          f"{str(exc).splitlines()[0]}") from None
    module.eval()
    return TrainedStudent(module, blob["plugin"], dict(blob["params"]), blob["input_dim"], blob["dim"],
                          map_path=path.with_name("map.pt"))


def as_student_output(out: Any, plugin: str, batch: int) -> tuple[torch.Tensor, ...]:
    """Check what a student's forward returned: a ``(B, D)`` tensor or a tuple of them."""
    levels = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    for z in levels:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != batch:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise PluginError(f"student '{plugin}' returned {got}; expected a tensor of shape ({batch}, D) "
                              "or a tuple of them")
    return levels
