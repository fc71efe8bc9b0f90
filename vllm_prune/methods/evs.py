"""``evs``: Efficient Video Sampling, tokens that barely change from the previous frame dropped.

Source: EVS (Bagrov et al., NVIDIA, "Efficient Video Sampling: Pruning Temporally
Redundant Tokens for Faster VLM Inference", arXiv 2510.14624), as vLLM runs it for the
whole server (``--video-pruning-rate``, ``vllm/multimodal/video_prune/evs.py``): each
token scores ``1 - cos`` against the token at the same place in the previous frame, the
first frame scores highest, and the ``keep`` best-scoring tokens of the video are kept
(``select``: the same tokens as vLLM's for the same count, pinned by a test).

Adapted for per-request pruning before the KV cache exists:
- how many tokens each frame keeps is fixed in the API server, before the vision tower
  has run, so ``frame_keeps`` runs ``select`` on the frames' pixels (each token cell's
  pixels, averaged over its patches and the frames of its temporal patch), and
  ``reduce_video`` then keeps, in each frame, its best tokens by the same score on the
  tower's features;
- every frame keeps at least one token (vLLM's may keep none of a frame: Qwen3-VL
  writes each frame's timestamp and count into the prompt): a frame left empty takes
  its most changed token in place of the least changed one kept;
- the count is the request's (``prune_ratio``: ``round(N * (1 - ratio))``, vLLM's
  ``int``; vLLM never keeps less than the first frame): when the first frame is not
  kept whole, it keeps evenly spaced tokens (its scores all tie). An image is a video
  of one frame: evenly spaced tokens.
"""

from __future__ import annotations

import torch

from .base import TemporalMethod
from .registry import register


def dissimilarity(frames: torch.Tensor) -> torch.Tensor:
    """[T, n, D] -> [T, n]: 1 - cos to the same token of the previous frame; frame 0: inf."""
    x = frames.float()
    # Cosine as a batched dot over norms computed once per token (F.cosine_similarity
    # makes full-size temporaries: about 5x slower on a 60-frame clip).
    norms = torch.linalg.vector_norm(x, dim=-1)
    dots = torch.einsum("tnd,tnd->tn", x[1:], x[:-1])
    change = 1 - dots / (norms[1:] * norms[:-1]).clamp_min(1e-8)
    first = torch.full_like(frames[:1, :, 0], float("inf"), dtype=change.dtype)
    return torch.cat([first, change])


def select(frames: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` most changed tokens of the video, as indices into [T * n], ascending."""
    order = torch.argsort(dissimilarity(frames).reshape(-1), descending=True, stable=True)
    return torch.sort(order[:keep]).values


@register
class EVS(TemporalMethod):
    name = "evs"
    summary = (
        "Video: drops the tokens that barely change from the same place in the previous "
        "frame (EVS, as vLLM's --video-pruning-rate, per request)."
    )

    def select(self, frames: torch.Tensor, keep: int) -> torch.Tensor:
        return select(frames, keep)

    def token_scores(self, frames: torch.Tensor) -> torch.Tensor:
        return dissimilarity(frames)
