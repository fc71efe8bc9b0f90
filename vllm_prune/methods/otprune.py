"""``otprune``: the tokens whose distribution best matches the whole image's, by greedy
log-determinant (OTPrune).

As the source (OTPrune, CVPR 2026, ``LLaVA/llava/model/llava_arch.py``): each feature
column of the projector's output is normalised over the tokens (``Xn = X / ||X||``
along the token axis); the kernel is ``L = I + gamma S S^T`` with ``S = Xn Xn^T``
(``prune_gamma``, the source's 0.01), and the ``keep`` tokens maximise
``log det(L_sel)`` greedily, by the fast greedy MAP inference of a DPP (Chen et al.,
2018: incremental Cholesky, each step the token of largest marginal gain). Needs
nothing but the features.

Cost: ``S S^T`` is formed the cheaper way, ``S = Xn Xn^T`` then ``S @ S``
(``2 N^2 D + 2 N^3`` FLOPs) or ``Xn (Xn^T Xn) Xn^T`` through the ``D x D`` Gram matrix
(``4 N D^2 + 2 N^2 D``), whichever has fewer FLOPs: the first up to ``N = sqrt(2) D``
(5792 tokens at D = 4096). The products run in float32, the greedy steps in float64
(its running subtraction of squares loses the small gains in float32). The greedy
inference is sequential by nature: ``keep`` steps of ``O(N t)``, a Python loop over
the steps with every step on the features' device (no host sync per step).

Adapted: none of the selection. ``L`` includes the identity, so every gain is at
least 1 and the inference always finds ``keep`` distinct tokens (no stopping floor,
unlike ``cdprune``); ties go to the earlier token; the rows come back in raster order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Context, Param, PruneMethod, Reduced, check_inputs, select_rows
from .cdprune import dpp_greedy_map
from .registry import register

GAMMA = Param(
    name="prune_gamma",
    kind=float,
    default=0.01,
    minimum=1e-6,
    maximum=100.0,
    description="Weight of the similarity term in the kernel I + gamma S S^T (OTPrune's 0.01).",
)


def ot_kernel(features: torch.Tensor, gamma: float) -> torch.Tensor:
    """``I + gamma S S^T``, ``S = Xn Xn^T``, columns normalised over tokens: [N, N] float64."""
    x = F.normalize(features.float(), dim=0)  # each feature column unit over the tokens
    n, d = x.shape
    if 2 * n * n * d + 2 * n**3 <= 4 * n * d * d + 2 * n * n * d:
        similarity = x @ x.T
        product = similarity @ similarity
    else:
        product = (x @ (x.T @ x)) @ x.T
    kernel = gamma * product.double()
    kernel = (kernel + kernel.T) / 2  # exactly symmetric, whatever the product's rounding
    kernel.diagonal().add_(1.0)
    return kernel


@register
class OTPrune(PruneMethod):
    name = "otprune"
    summary = "Tokens matching the image's feature distribution, by greedy log-det (OTPrune)."
    params = (GAMMA,)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        kernel = ot_kernel(features, ctx.param(GAMMA))
        # L >= I: every gain is at least 1, so all ``keep`` steps find a token.
        return select_rows(features, dpp_greedy_map(kernel, keep).cpu())
