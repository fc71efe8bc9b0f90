"""``vidcom2``: VidCom2, the budget spent unevenly over frames by how distinct each frame is.

Source: VidCom2 (Liu et al., "Video Compression Commander: Plug-and-Play Inference
Acceleration for Video Large Language Models", EMNLP 2025, github.com/xuyang-liu16/VidCom2),
as vLLM runs it for Qwen3-VL (``vllm/multimodal/video_prune/vidcom2.py``): tokens are
compared in the half of the channels that vary least over the video; a token's
redundancy is its multi-scale Gaussian similarity to the video's mean and to its
frame's mean; a frame's distinctiveness is minus its tokens' mean similarity to the
video; each frame's budget is ``base * (1 + p_f - mean p)`` with ``p = softmax(
distinctiveness / 0.01)``, and each frame keeps its least redundant tokens, the total
then set exactly to ``keep`` by redundancy (``select``: the same tokens as vLLM's for
the same count, pinned by a test; the frames' budgets follow ``keep / N``, vLLM's
``1 - rate``, the same where the rate gives a whole count).

Adapted for per-request pruning before the KV cache exists: the frames' budgets are
fixed in the API server, so ``frame_keeps`` runs ``select`` on the frames' pixels (each
token cell's pixels, averaged over its patches and frames); ``reduce_video`` keeps, in
each frame, its least redundant tokens by the same score on the tower's features. Every
frame keeps at least one token (a frame left empty takes its least redundant token in
place of the most redundant one kept). An image is a video of one frame: its least
redundant tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TemporalMethod
from .registry import register

BANDWIDTHS = tuple(2.0**k for k in range(-3, 2))  # the source's multi-scale Gaussian kernels
LOW_VARIANCE_SHARE = 0.5  # of the channels, those that vary least over the video
TEMPERATURE = 0.01  # of the softmax over frame distinctiveness


def _gaussian(distance: torch.Tensor) -> torch.Tensor:
    """The multi-scale kernels' sum at squared distances ``distance``."""
    return sum(torch.exp(-distance / (2.0 * a)) for a in BANDWIDTHS)  # type: ignore[return-value]


def column_variance(x: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """``x.var(dim=0, unbiased=False)`` [N, D] -> [D], two passes in blocks of ``rows``
    tokens: torch's column variance reads the columns with a stride, several times slower
    than a block's sums."""
    mean = x.mean(dim=0)
    total = torch.zeros_like(mean)
    for start in range(0, x.shape[0], rows):
        total += (x[start : start + rows] - mean).square_().sum(dim=0)
    return total / x.shape[0]


def scores(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, n, D] -> (redundancy of each token [T, n], similarity to the video [T, n]).

    Squared distances of the unit rows to the video's and their frame's mean are
    ``|x|^2 - 2 x.c + |c|^2``, both dot products in one batched product: the rows are
    read a few times, never copied into a [T, n, C] difference.
    """
    t, n, d = frames.shape
    flat = frames.reshape(t * n, d).float()
    channels = max(1, int(d * LOW_VARIANCE_SHARE))
    low = torch.topk(column_variance(flat), k=channels, largest=False).indices
    x = flat.index_select(-1, low)
    x = x.div_(torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12))
    x = x.reshape(t, n, channels)  # F.normalize's unit rows, made in place
    video, frame = x.mean(dim=(0, 1)), x.mean(dim=1)  # [C], [T, C]
    centres = torch.stack([video.expand(t, channels), frame], dim=-1)  # [T, C, 2]
    dots = torch.bmm(x, centres)  # [T, n, 2]
    own = torch.linalg.vector_norm(x, dim=-1).square()  # [T, n]
    to_video = _gaussian((own - 2 * dots[..., 0] + video.square().sum()).clamp_min(0))
    to_frame = _gaussian(
        (own - 2 * dots[..., 1] + frame.square().sum(-1, keepdim=True)).clamp_min(0)
    )
    return to_video + to_frame, to_video


def select(frames: torch.Tensor, keep: int) -> torch.Tensor:
    """The source's ``keep`` tokens of the video, as indices into [T * n], ascending."""
    t, n, _ = frames.shape
    redundancy, to_video = scores(frames)
    distinct = -to_video.mean(dim=-1)
    share = F.softmax((distinct - distinct.max()) / TEMPERATURE, dim=0)
    base = keep / (t * n)
    scale = (base * (1.0 + share - share.mean())).clamp(max=1.0)
    budgets = (scale * n).round().long().clamp(min=1, max=n).tolist()
    mask = torch.zeros(t, n, dtype=torch.bool)
    for f, k in enumerate(budgets):
        mask[f, torch.topk(redundancy[f], k=k, largest=False, sorted=False).indices] = True
    flat, flat_scores = mask.reshape(-1), redundancy.reshape(-1)
    drift = int(flat.sum()) - keep
    if drift > 0:  # drop the most redundant of those kept
        kept = flat.nonzero().squeeze(-1)
        flat[kept[torch.topk(flat_scores[kept], k=drift, largest=True, sorted=False).indices]] = 0
    elif drift < 0:  # add the least redundant of the others
        free = (~flat).nonzero().squeeze(-1)
        add = torch.topk(flat_scores[free], k=-drift, largest=False, sorted=False).indices
        flat[free[add]] = True
    return flat.nonzero().squeeze(-1)


@register
class VidCom2(TemporalMethod):
    name = "vidcom2"
    summary = (
        "Video: more tokens for the frames that differ most from the rest of the video, "
        "each frame's least redundant tokens (VidCom2)."
    )

    def select(self, frames: torch.Tensor, keep: int) -> torch.Tensor:
        return select(frames, keep)

    def token_scores(self, frames: torch.Tensor) -> torch.Tensor:
        return -scores(frames)[0]
