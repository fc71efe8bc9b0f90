"""LLaVA-NeXT with visual-token pruning before the KV cache exists.

vLLM gives an image ``N`` tokens: the base image (the whole image at 336 px,
24 x 24 = 576 tokens), then the anyres crops stitched into one grid of the
image at high resolution with the padding cut away (``H x W`` tokens), each of
its rows followed by an ``image_newline`` token (``N = 576 + H (W + 1)``).
``keep`` is computed from that ``N``, vLLM's own placeholder count.

Pruning treats the base image and the stitched grid as two images with their
own grids: ``keep`` is split between them in proportion to their tokens, and
the method runs on each (so pooling pools each grid, windows tile each grid,
random is uniform over each). Text-guided methods score both with one scout
pass over all visual tokens. The retained rows are the base image's, then the
grid's, each in raster order.

Newline tokens are dropped when an image is pruned: they carry no image content
(one learned vector), mark the end of a row of the full grid, and after
selection the retained tokens of a row no longer fill it, so a newline would
mark nothing; keeping them would spend the budget on ``H`` identical tokens.
Unpruned images (``none``, or ``keep = N``) keep them, exactly as vLLM does.
Vision-attention methods are refused: LLaVA-NeXT's [CLS] rows are per crop
and are not mapped onto the stitched grid.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    unpad_image,
)
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..methods.base import proportional_quotas
from ..plan import PrunePlan, reduce_plan
from ..signals.observe import observe, rows_of
from . import wire
from .llava import PruneLlavaLikeProcessorMixin
from .parallel import refuse_pipeline_parallel, sum_over_tensor_parallel
from .plugin import check_not_swapped
from .tower_batches import TowerBatchesMixin

PARTS = ("base", "grid")  # the grids of an image, as VLLM_PRUNE_TRACE names them


class PruneLlavaNextMultiModalProcessor(PruneLlavaLikeProcessorMixin, LlavaNextMultiModalProcessor):
    @classmethod
    def vision_attention_refusal(cls, hf_config: Any) -> str | None:
        return (
            "LLaVA-NeXT's tower sees each crop on its own, so its attention ([CLS] rows "
            "included) does not map onto the stitched grid"
        )


@MULTIMODAL_REGISTRY.register_processor(
    PruneLlavaNextMultiModalProcessor,
    info=LlavaNextProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class PruneLlavaNextForConditionalGeneration(TowerBatchesMixin, LlavaNextForConditionalGeneration):
    prune_processor = PruneLlavaNextMultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        refuse_pipeline_parallel(vllm_config.parallel_config.pipeline_parallel_size)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        check_not_swapped(type(self), vllm_config.model_config.architecture)
        self._init_tower_batches(vllm_config)

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = wire.pop_plans(kwargs)
        if plans is None:
            return super().embed_multimodal(**kwargs)
        embeddings = self._encode_in_batches(kwargs, [plan.tokens for plan in plans])
        sizes = kwargs.get("image_sizes")
        llm = self.language_model.model
        out = []
        for i, (image, plan) in enumerate(zip(embeddings, plans, strict=True)):
            if plan.keep == image.shape[0]:
                out.append(image)
                continue
            grids = self._grids(image.shape[0], None if sizes is None else sizes[i])
            out.append(self._reduce(image, grids, plan, llm))
        return out

    def _grids(
        self, num_tokens: int, image_size: torch.Tensor | None
    ) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Each grid's (rows of the image's features, (h, w)): base image, then stitched crops."""
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        grids = [(torch.arange(side * side), (side, side))]
        if num_tokens <= side * side + 1:  # the base image only (and its newline)
            return grids
        if image_size is None:
            raise ValueError("LLaVA-NeXT pruning needs the image size to find its crop grid")
        height, width = (int(v) for v in image_size.tolist())
        rows, cols = get_anyres_image_grid_shape(
            (height, width), self.config.image_grid_pinpoints, self.config.vision_config.image_size
        )
        stitched = unpad_image(torch.empty(1, rows * side, cols * side), (height, width))
        h, w = stitched.shape[1:]
        if side * side + h * (w + 1) != num_tokens:
            raise ValueError(f"LLaVA-NeXT layout {h} x {w} does not explain {num_tokens} tokens")
        positions = torch.arange(h * (w + 1)).view(h, w + 1)[:, :w].reshape(-1)
        grids.append((side * side + positions, (h, w)))
        return grids

    def _reduce(
        self,
        image: torch.Tensor,
        grids: list[tuple[torch.Tensor, tuple[int, int]]],
        plan: PrunePlan,
        llm: torch.nn.Module,
    ) -> torch.Tensor:
        candidates = torch.cat([rows for rows, _ in grids])
        visual = image[candidates.to(image.device)]
        found = observe(llm, visual, plan, sum_over_ranks=sum_over_tensor_parallel)
        keeps = proportional_quotas([rows.numel() for rows, _ in grids], plan.keep)
        parts, start = [], 0
        for part, (rows, shape), keep in zip(PARTS[: len(grids)], grids, keeps, strict=True):
            local = torch.arange(start, start + rows.numel())
            start += rows.numel()
            if keep == 0:
                continue
            sub_plan = PrunePlan(plan.method, keep, plan.params, plan.text_ids)
            reduced = reduce_plan(
                visual[local], shape, sub_plan, part=part, **rows_of(found, local)
            )
            parts.append(reduced.features)
        return torch.cat(parts)
