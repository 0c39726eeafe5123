"""Built-in students: ``linear``, ``mlp`` and ``hierarchical`` (coarse ``dim`` + fine ``dim × dim``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from atlas_plugins.errors import ConfigError


MAX_LAYERS = 64
MAX_WIDTH = 65536
HIDDEN = (128, 128, 128, 128)  # four GELU layers of 128: the best measured for 5-D maps (benchmarks/quality.py)


def _sizes(hidden) -> list[int]:
    """Hidden layer sizes: an integer or a list of them, at most MAX_LAYERS layers of at most MAX_WIDTH units."""
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]
    if (not isinstance(hidden, (list, tuple)) or len(hidden) > MAX_LAYERS
            or not all(isinstance(h, int) and not isinstance(h, bool) and 0 < h <= MAX_WIDTH for h in hidden)):
        shown = hidden if not isinstance(hidden, (list, tuple)) or len(hidden) <= 8 else f"a list of {len(hidden)}"
        raise ConfigError(f"hidden must be a list of at most {MAX_LAYERS} positive integers of at most {MAX_WIDTH:,}, "
                          f"got {shown!r}")
    return list(hidden)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class MLPStudent(nn.Module):
    """``(B, input_dim) -> (B, dim)`` through GELU hidden layers; optionally decodes back.

    With ``reconstruct=True`` a mirrored decoder maps ``z`` back to ``(B, input_dim)``
    (used by the ``combined`` loss as its reconstruction term); ``reconstructs`` tells the
    pipeline so.
    """

    def __init__(self, input_dim: int, dim: int, hidden: Sequence[int] = (), reconstruct: bool = False):
        super().__init__()
        hidden = list(hidden)
        self.reconstructs = reconstruct
        self.encoder = _mlp([input_dim, *hidden, dim])
        self.decoder = _mlp([dim, *reversed(hidden), input_dim]) if reconstruct else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def linear_chain(self) -> list[nn.Module]:
        """The forward pass as plain layers (Linear, GELU, ...): what an export to other tools needs."""
        return list(self.encoder)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise ConfigError("this student was built without reconstruct = true")
        return self.decoder(z)


class HierarchicalStudent(nn.Module):
    """Two levels from one trunk: coarse ``(B, dim)`` and fine ``(B, dim·dim)``, coarse first."""

    def __init__(self, input_dim: int, dim: int, hidden: Sequence[int] = (256,), reconstruct: bool = False):
        super().__init__()
        hidden = list(hidden)
        self.reconstructs = reconstruct
        width = hidden[-1] if hidden else input_dim
        self.trunk = nn.Sequential(_mlp([input_dim, *hidden]), nn.GELU()) if hidden else nn.Identity()
        self.coarse = nn.Linear(width, dim)
        self.fine = nn.Linear(width + dim, dim * dim)
        self.decoder = _mlp([dim * dim, *reversed(hidden), input_dim]) if reconstruct else None

    def linear_chain(self) -> list[nn.Module]:
        """The coarse level's forward pass as plain layers (the fine level also reads the coarse output)."""
        trunk = [*self.trunk[0], self.trunk[1]] if isinstance(self.trunk, nn.Sequential) else []
        return [*trunk, self.coarse]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        coarse = self.coarse(h)
        return coarse, self.fine(torch.cat([h, coarse], dim=1))

    def decode(self, z) -> torch.Tensor:
        if self.decoder is None:
            raise ConfigError("this student was built without reconstruct = true")
        return self.decoder(z[-1] if isinstance(z, (tuple, list)) else z)


def _check_dims(input_dim, dim):
    for name, v in (("input_dim", input_dim), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"student {name} must be a positive integer, got {v!r}")


def linear(input_dim: int, dim: int = 5, reconstruct: bool = False):
    """One linear map (the quickstart's student)."""
    _check_dims(input_dim, dim)
    return MLPStudent(input_dim, dim, [], reconstruct=reconstruct)


def mlp(input_dim: int, dim: int = 5, hidden: int | Sequence[int] = HIDDEN, reconstruct: bool = False):
    """Multi-layer perceptron with GELU hidden layers (default: four of 128, the best measured for 5-D maps)."""
    _check_dims(input_dim, dim)
    return MLPStudent(input_dim, dim, _sizes(hidden), reconstruct=reconstruct)


def hierarchical(input_dim: int, dim: int = 5, hidden: int | Sequence[int] = HIDDEN, reconstruct: bool = False):
    """Coarse ``dim`` and fine ``dim × dim`` levels from one trunk (``hidden``, as ``mlp``'s); trained by the
    ``hierarchical`` loss, which a pipeline's ``[loss]`` gets when it names none (``default_loss``)."""
    _check_dims(input_dim, dim)
    if dim > 256:
        raise ConfigError(f"student dim must be at most 256 for hierarchical (its fine level has dim × dim = "
                          f"{dim * dim:,} dimensions), got {dim}")
    return HierarchicalStudent(input_dim, dim, _sizes(hidden), reconstruct=reconstruct)


# Two levels need a loss over levels: the pipeline file's [loss] when it names no loss (atlas_plugins.config).
hierarchical.default_loss = {"name": "hierarchical", "base": "neighbors"}
