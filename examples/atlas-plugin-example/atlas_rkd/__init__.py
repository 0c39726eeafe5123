"""RKD distance-wise loss (Park et al., "Relational Knowledge Distillation", CVPR 2019) for Atlas Distill.

The student keeps the teacher's *relative* pairwise distances.  With
ψ(x)ᵢⱼ = ‖xᵢ − xⱼ‖ / μ(x), μ(x) the mean of ‖xᵢ − xⱼ‖ over the batch's pairs j≠i,

    ℓᵢ = mean_{j≠i} huber(ψ(s)ᵢⱼ − ψ(t)ᵢⱼ),   huber(u) = u²/2 if |u| < δ else δ(|u| − δ/2).

Unlike the built-in relational losses it works on distances, not cosines, and
needs no temperature (``tau`` is accepted and ignored).
"""

import torch
import torch.nn.functional as F

import atlas_plugins
from atlas_plugins.checks import check_pair, check_reduction, off_diagonal, reduce


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = off_diagonal(torch.cdist(x, x))
    return d / d.mean().clamp_min(1e-12)


def rkd_distance(student, teacher, *, tau=1.0, reduction="mean", delta=1.0):
    """RKD distance-wise loss; see the module docstring for the formula."""
    check_reduction(reduction)
    check_pair(student, teacher, min_batch=2)
    with torch.no_grad():
        t = _normalised_distances(teacher.detach())
    s = _normalised_distances(student)
    per = F.huber_loss(s, t, reduction="none", delta=float(delta)).mean(dim=1)
    return reduce(per, reduction)


@atlas_plugins.hookimpl
def register_losses(register):
    register("rkd-distance", rkd_distance, "RKD distance-wise: keep relative pairwise distances (Park et al. 2019)")
