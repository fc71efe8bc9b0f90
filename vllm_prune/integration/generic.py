"""The generic adapter: pruning for a vision-language model from the classes vLLM registered.

Most models vLLM serves share one mechanism: the processor builds an image's
placeholder with a prompt update whose ``is_embed`` mask marks the positions that
take the image's rows (``PromptUpdateDetails.select_token_id``), structure tokens
(begin/end markers, tile tags, row breaks) stay text, and ``embed_multimodal``
returns one tensor of content rows per image. For such a model the plugin
registers, under the architecture's name, a subclass of vLLM's model class built
here on first use; its processor is vLLM's own, with the prune handling mixed in:

- Processor (API server): the image's embed runs are read from vLLM's own prompt
  update; ``keep`` is shared over its parts (runs, or tiles of a run, by the
  family's declaration in ``families``); each run of the placeholder shrinks to its
  parts' keep and every structure token stays (``layout``).
- Model (engine): each part of the image's rows is pruned on its own grid and the
  kept rows go back in order. Where the family declares its vision tower
  (``families.Tower``), the tower's [CLS] row and attention are read while it runs.

Whether the mechanism holds is decided per architecture when vLLM first builds the
processor (``decide``): one dummy image must lay out as runs of one placeholder id
that shrink consistently, and the model must not need M-RoPE positions or hold
separator rows that the family does not declare. Where it does not hold, the
processor is vLLM's, untouched, and ``GET /v1/prune/methods`` says why.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, supports_mrope
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFeatureSpec, MultiModalKwargsItems
from vllm.multimodal.parse import ImageEmbeddingItems, ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseMultiModalProcessor,
    EncDecMultiModalProcessor,
    ProcessorInputs,
    PromptUpdate,
    PromptUpdateDetails,
    TimingContext,
)
from vllm.multimodal.utils import group_and_batch_mm_kwargs

from .. import layout, learned_rows
from ..methods import Reduced, get_method, method_names
from ..methods.base import IN_TOWER, TOWER_ATTENTION, VISION_ATTENTION
from ..plan import PrunePlan, needs, reduce_plan
from ..signals.observe import observe, rows_of
from ..signals.tower import TowerCapture, TowerFields, capture_tower
from ..spec import METHOD_FIELD
from . import wire
from .families import MROPE, Family, Tower, family_of
from .parallel import refuse_pipeline_parallel, sum_over_tensor_parallel
from .plugin import check_not_swapped
from .positions import PositionOffsetsMixin, grid_offsets, positions_of_pruned
from .processing import PruneProcessorMixin, refuse
from .tower_batches import TowerBatchesMixin

logger = logging.getLogger("vllm.prune")

MODELS_PACKAGE = "vllm.model_executor.models"
PREFIX = "Prune__"  # exported names: Prune__<vLLM module>__<vLLM class> (plugin.generic_targets)
# Decoders whose layers the scout pass runs (signals.scout): Llama-style layers as vLLM
# builds them, with per-head query/key norms (Qwen3, Gemma 3), norms on both sides and
# sliding-window layers (Gemma 3), Gemma's scaled embeddings. Not Gemma 1 (PaliGemma):
# vLLM 0.34 serves it through its Transformers backend, whose layers are not vLLM's.
SCOUT_DECODERS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text"})
# A dummy image wide enough to give tiled families several tiles.
DUMMY_IMAGE = (896, 448)


def __getattr__(name: str) -> type:
    """Build the pruning subclass of a vLLM model class on first use (vLLM loads lazily)."""
    if not name.startswith(PREFIX):
        raise AttributeError(name)
    vllm_module, _, vllm_class = name[len(PREFIX) :].partition("__")
    base = getattr(importlib.import_module(f"{MODELS_PACKAGE}.{vllm_module}"), vllm_class)
    if not hasattr(base, "_processor_factory"):
        return base  # no multimodal processor of its own: nothing to prune, served as it is
    model = pruning_model(base)
    model.__qualname__ = name  # found again under this name (pickling, vLLM's registry)
    globals()[name] = model
    return model


class LayoutError(ValueError):
    """The model's placeholder does not follow the generic mechanism; the message says how."""


@dataclass(frozen=True)
class Decision:
    """Whether the generic path holds for an architecture, and why not."""

    architecture: str
    family: Family
    refusal: str | None = None


DECISIONS: dict[str, Decision] = {}  # by architecture, in this process


def pruning_model(base: type) -> type:
    """A subclass of vLLM's model class ``base`` that prunes, with its processor wrapped."""
    factories = base._processor_factory  # type: ignore[attr-defined]
    mixin = GenericMropeModel if supports_mrope(base) else GenericPruneModel
    model = type(f"Prune{base.__name__}", (mixin, base), {"__module__": __name__})
    return MULTIMODAL_REGISTRY.register_processor(
        _processor_factory(factories.processor, base),
        info=factories.info,
        dummy_inputs=factories.dummy_inputs,
    )(model)


def _processor_factory(make: Callable[..., Any], base: type) -> Callable[..., Any]:
    def build(info: Any, dummy_inputs: Any) -> BaseMultiModalProcessor:
        processor = make(info, dummy_inputs)
        decision = decide(processor, base)
        if decision.refusal is not None:
            return processor
        # The class vLLM's factory chose, built the same way, with the prune handling.
        return _pruning_processor(type(processor), decision.family)(info, dummy_inputs)

    return build


_PROCESSORS: dict[tuple[type, Family], type] = {}


def _pruning_processor(vllm_processor: type, family: Family) -> type:
    """vLLM's processor class with the generic prune handling mixed in (one per family)."""
    found = _PROCESSORS.get((vllm_processor, family))
    if found is None:
        found = type(
            f"Prune{vllm_processor.__name__}",
            (GenericPruneProcessorMixin, vllm_processor),
            {"__module__": __name__, "family": family, "vllm_processor": vllm_processor},
        )
        _PROCESSORS[(vllm_processor, family)] = found
    return found


def architecture_of(processor: BaseMultiModalProcessor, base: type) -> str:
    """The served architecture name (config.json's, as the model's ``vllm_config`` has it;
    an omni model's processing info holds only its thinker's config), else vLLM's class
    name."""
    architectures = processor.info.ctx.model_config.architectures or []
    return architectures[0] if architectures else base.__name__


def decide(processor: BaseMultiModalProcessor, base: type) -> Decision:
    """Whether the generic path holds for this model: once per architecture and process."""
    architecture = architecture_of(processor, base)
    known = DECISIONS.get(architecture)
    if known is not None:
        return known
    family = family_of(architecture)
    refusal = family.unpruned or _refusal(processor, base, family)
    decision = Decision(architecture, family, refusal)
    DECISIONS[architecture] = decision
    if refusal is None:
        logger.info("vllm-prune prunes %s through the generic adapter", architecture)
    else:
        logger.warning("vllm-prune serves %s unpruned: %s", architecture, refusal)
    return decision


def _refusal(processor: BaseMultiModalProcessor, base: type, family: Family) -> str | None:
    if isinstance(processor, EncDecMultiModalProcessor):
        return "it is an encoder-decoder model: its images go to the encoder, not the prompt"
    if supports_mrope(base) and not family.mrope:
        return MROPE
    if "image" not in processor.info.get_supported_mm_limits():
        return "it takes no images"
    image = Image.new("RGB", DUMMY_IMAGE, (127, 127, 127))
    try:
        mm_items = processor.info.parse_mm_data({"image": [image]}, validate=False)
        processed = processor._apply_hf_processor_main(mm_items, {})
        ((full, mask, is_embed),) = placeholders(processor, mm_items, processed, {})
        _check_shrinks(full, mask, is_embed)
        if family.parts is not None:
            declared_parts(family, processor.info, processed, 0, ImageSize(*DUMMY_IMAGE), mask)
    except LayoutError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001  any failure means: do not prune this model
        return f"its dummy image could not be laid out ({type(err).__name__}: {err})"
    return None


def _image_update(
    processor: BaseMultiModalProcessor,
    mm_items: MultiModalDataItems,
    hf_kwargs: Mapping[str, object],
    out_mm_kwargs: MultiModalKwargsItems,
) -> PromptUpdate:
    """vLLM's own prompt update of the images (exactly one)."""
    found = [
        u
        for u in _vllm_prompt_updates(processor, mm_items, hf_kwargs, out_mm_kwargs)
        if u.modality == "image"
    ]
    if len(found) != 1:
        raise LayoutError(
            f"its processor makes {len(found)} prompt updates per image; the generic "
            "adapter reads exactly one"
        )
    return found[0]


def _vllm_prompt_updates(
    processor: BaseMultiModalProcessor,
    mm_items: MultiModalDataItems,
    hf_kwargs: Mapping[str, object],
    out_mm_kwargs: MultiModalKwargsItems,
) -> Sequence[PromptUpdate]:
    """The prompt updates of vLLM's own processor class (not the pruning one)."""
    own = getattr(processor, "vllm_processor", type(processor))
    return own._get_prompt_updates(processor, mm_items, hf_kwargs, out_mm_kwargs)


IsEmbed = Callable[[list[int]], torch.Tensor] | None


def placeholders(
    processor: BaseMultiModalProcessor,
    mm_items: MultiModalDataItems,
    processed: BatchFeature,
    hf_kwargs: Mapping[str, object],
) -> list[tuple[list[int], list[bool], IsEmbed]]:
    """Each image's unpruned placeholder tokens, their ``is_embed`` mask and the function
    that makes it (None: every position), as vLLM makes them.

    Refused (``LayoutError``) where an embed position and a structure token share an
    id: a shrunk placeholder would then not mark the same positions.
    """
    fields = processor._get_mm_fields_config(processed, hf_kwargs)
    out_mm_kwargs = MultiModalKwargsItems.from_hf_inputs(processed, fields)
    update = _image_update(processor, mm_items, hf_kwargs, out_mm_kwargs)
    found = []
    for index in range(mm_items.get_count("image", strict=False)):
        content = update.resolve(index).content
        full = content.full
        if not isinstance(full, list) or not all(isinstance(t, int) for t in full):
            raise LayoutError("its placeholder is text, not token ids")
        mask = [True] * len(full) if content.is_embed is None else content.is_embed(full).tolist()
        embed_ids = {t for t, e in zip(full, mask, strict=True) if e}
        structure_ids = {t for t, e in zip(full, mask, strict=True) if not e}
        if not embed_ids:
            raise LayoutError("its placeholder has no embed positions")
        if embed_ids & structure_ids:
            raise LayoutError("a token id of its placeholder marks both image rows and structure")
        found.append((full, [bool(e) for e in mask], content.is_embed))
    return found


def declared_parts(
    family: Family,
    info: Any,
    processed: Mapping[str, Any],
    index: int,
    size: ImageSize,
    mask: list[bool],
) -> list[layout.Part]:
    """The parts a family declares for image ``index`` (``Family.parts``), checked against
    the runs of its placeholder (``LayoutError`` where they differ)."""
    assert family.parts is not None
    parts = family.parts(info, processed, index, size.width, size.height)
    if layout.run_lengths(parts) != layout.runs_of(mask):
        raise LayoutError(
            f"its placeholder's embed runs {layout.runs_of(mask)} are not the declared parts "
            f"with their separator rows ({layout.run_lengths(parts)})"
        )
    if family.mrope and len(parts) != 1:
        raise LayoutError("its M-RoPE positions are declared for images of one part only")
    return parts


def _check_shrinks(full: list[int], mask: list[bool], is_embed: IsEmbed) -> None:
    """A placeholder whose runs are halved still marks exactly the kept positions."""
    keeps = [max(1, run // 2) for run in layout.runs_of(mask)]
    shrunk = layout.shrink(full, mask, keeps)
    marked = [True] * len(shrunk) if is_embed is None else is_embed(shrunk).tolist()
    if layout.runs_of(marked) != keeps:
        raise LayoutError("its embed mask does not follow the placeholder when it shrinks")


class GenericPruneProcessorMixin(PruneProcessorMixin):
    """The prune handling on vLLM's own processor of a model that follows the mechanism."""

    family: Family = Family()
    prunes_videos = False  # videos go through unpruned; a method on one is a 400

    def _image_parts(
        self,
        mm_items: MultiModalDataItems,
        processed: BatchFeature,
        hf_kwargs: Mapping[str, object],
    ) -> list[list[layout.Part]]:
        hf_config = self.info.get_hf_config()  # type: ignore[attr-defined]
        tile = self.family.tile(hf_config) if self.family.tile is not None else None
        masks = [m for _, m, _ in placeholders(self, mm_items, processed, hf_kwargs)]  # type: ignore[arg-type]
        images = self._images(mm_items)
        if self.family.parts is None or isinstance(images, ImageEmbeddingItems):
            # Precomputed embeddings of a family with separators: only 'none' gets here.
            return [layout.parts_of(layout.runs_of(m), self.family.grid, tile) for m in masks]
        return [
            declared_parts(self.family, self.info, processed, i, images.get_image_size(i), m)  # type: ignore[attr-defined]
            for i, m in enumerate(masks)
        ]

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        updates = _vllm_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs)  # type: ignore[arg-type]
        return [_shrinking(u, out_mm_kwargs) if u.modality == "image" else u for u in updates]

    @classmethod
    def vision_attention_refusal(cls, hf_config: Any) -> str | None:
        if cls.family.tower is None:
            return (
                "vllm-prune reads a vision tower's [CLS] row where the model's family "
                "declares its tower, and this model's is not declared"
            )
        return None

    @classmethod
    def family_refusal(cls, method: str, hf_config: Any) -> str | None:
        if IN_TOWER in get_method(method).needs and cls.family.tower is not None:
            return (
                f"'{method}' cuts tokens inside the vision tower: the generic adapter reads "
                "this model's tower but runs it whole"
            )
        return super().family_refusal(method, hf_config)

    @classmethod
    def grid_refusal(cls, hf_config: Any) -> str | None:
        if not cls.family.knows_grid:
            return "vllm-prune does not know this model's token grid"
        return None

    @classmethod
    def scout_refusal(cls, hf_config: Any) -> str | None:
        decoder = hf_config.get_text_config().model_type
        if decoder in SCOUT_DECODERS:
            return None
        return (
            f"the scout pass runs the decoder layers of {', '.join(sorted(SCOUT_DECODERS))};"
            f" this model's LLM is '{decoder}'"
        )

    def _check_supported(self, method: str, mm_items: MultiModalDataItems) -> None:
        super()._check_supported(method, mm_items)
        if method != "none" and self.family.parts is not None and "image" in mm_items:
            if isinstance(self._images(mm_items), ImageEmbeddingItems):
                raise refuse(
                    METHOD_FIELD,
                    "vllm-prune reads this model's image layout (separator rows, the token "
                    f"grid, positions) from the image itself, so '{method}' cannot prune "
                    "precomputed image embeddings; send the image itself, or 'none'",
                )
        if method != "none" and mm_items.get_count("video", strict=False):
            raise refuse(
                METHOD_FIELD,
                f"vllm-prune prunes this model's images, not its videos; send '{method}' "
                "with images only, or 'none' with videos",
            )


def _shrinking(update: PromptUpdate, out_mm_kwargs: MultiModalKwargsItems) -> PromptUpdate:
    """``update`` with each image's runs cut to the keep its parts were given."""
    original = update.content

    def content(item_idx: int) -> PromptUpdateDetails:
        details = original(item_idx) if callable(original) else original
        if not isinstance(details, PromptUpdateDetails):
            details = PromptUpdateDetails.from_seq(details)
        item = out_mm_kwargs["image"][item_idx]
        parts = wire.item_parts(item)
        counts = wire.item_counts(item)
        if not parts or counts.keep == counts.tokens:  # kept whole, separators too
            return details
        full = details.full
        mask = [True] * len(full) if details.is_embed is None else details.is_embed(full).tolist()
        keeps = layout.run_rows([p for p, _ in parts], counts.keep)
        return PromptUpdateDetails(full=layout.shrink(full, mask, keeps), is_embed=details.is_embed)

    return _with_content(update, content)


def _with_content(
    update: PromptUpdate, content: Callable[[int], PromptUpdateDetails]
) -> PromptUpdate:
    """A copy of a ``PromptReplacement`` / ``PromptInsertion`` with new content."""
    name = "replacement" if hasattr(update, "replacement") else "insertion"
    return dataclasses.replace(update, **{name: content})


class GenericPruneModel(TowerBatchesMixin):
    """Mixed into vLLM's model class: prunes each image's rows part by part, the tower's
    batches within the encoder budget (``tower_batches``)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        refuse_pipeline_parallel(vllm_config.parallel_config.pipeline_parallel_size)
        if vllm_config.compilation_config.cudagraph_mm_encoder and prunes(vllm_config):
            raise ValueError(ENCODER_GRAPHS_REFUSAL)
        super().__init__(vllm_config=vllm_config, prefix=prefix)  # type: ignore[call-arg]
        check_not_swapped(type(self), vllm_config.model_config.architecture)
        self._init_tower_batches(vllm_config)
        self._prune_model_config = vllm_config.model_config
        # Checked once the weights are loaded (else on the first images the engine embeds).
        self._content_checked = not prunes(vllm_config)
        self._learned: torch.Tensor | None = None  # an undeclared family's structure rows

    def process_weights_after_loading(self) -> None:
        """vLLM's hook once the weights are loaded and processed (the model's own last):
        the content check runs here, at start, with the served weights."""
        own = getattr(super(), "process_weights_after_loading", None)
        if callable(own):
            own()
        if not self._content_checked:
            self._content_checked = self._try_content_check(
                "it runs on the first images the engine embeds"
            )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        if not self._content_checked:
            self._content_checked = True
            self._try_content_check("images are pruned without it")
        plans = wire.pop_plans(kwargs)
        if plans is None:
            return super().embed_multimodal(**kwargs)  # type: ignore[misc]
        llm = decoder(self.get_language_model())  # type: ignore[attr-defined]
        rows = [sum(part.embedded for part, _ in plan.parts) for plan in plans]
        out = []
        # Each batch is pruned before the next is encoded.
        for batch, start, end in self._tower_batches(kwargs, rows):
            batch_plans = plans[start:end]
            with self._reading_tower(batch_plans) as captured:
                embeddings = super().embed_multimodal(**batch)  # type: ignore[misc]
            towers = self._tower_fields(captured, batch_plans)
            out += [
                self._pruned(e, p, llm, t)
                for e, p, t in zip(embeddings, batch_plans, towers, strict=True)
            ]
        return out

    def _try_content_check(self, otherwise: str) -> bool:
        """The content check; a disagreement stops the server, any other failure (the
        tower may need what an engine step sets up) is logged with what happens
        ``otherwise``. Whether it ran."""
        try:
            self._check_content()
        except learned_rows.Disagreement:
            raise
        except Exception as err:  # noqa: BLE001
            logger.warning(
                "vllm-prune: the content check could not run (%s: %s); %s",
                type(err).__name__,
                err,
                otherwise,
            )
            return False
        return True

    def _check_content(self) -> None:
        """Two different images through the served weights: the rows they share are
        learned structure (``learned_rows``). A family that declares its layout must
        declare exactly those as separators, or the server does not start; a family
        that declares nothing drops them when an image is pruned."""
        started = time.perf_counter()
        architecture = self._prune_model_config.architectures[0]
        processor = MULTIMODAL_REGISTRY.create_processor(self._prune_model_config)
        device = next(self.parameters()).device  # type: ignore[attr-defined]
        embeddings, parts = [], []
        for seed in (1, 2):
            (item,) = _dummy_image_items(processor, seed)
            parts.append([part for part, _ in wire.item_parts(item)])
            for _, _, kwargs in group_and_batch_mm_kwargs([("image", item)], device=device):
                embeddings += list(self.embed_multimodal(**kwargs))
        first, second = embeddings
        found = learned_rows.same_rows(first, second)
        if len(found) == first.shape[0]:  # the image does not reach its rows: no verdict
            logger.warning(
                "vllm-prune: %s embeds two different images with every row the same, so "
                "its content check cannot tell content from structure; it is skipped",
                architecture,
            )
            return
        family = family_of(architecture)
        declares = family.declares_layout
        if declares:
            declared = layout.separator_rows(parts[0])
            problem = learned_rows.disagreement(found, declared, architecture)
            if problem is not None:
                raise learned_rows.Disagreement(problem)
        elif found:
            self._learned = learned_rows.distinct_vectors(first, found)
        elif family.learned is not None:
            raise learned_rows.Disagreement(learned_rows.none_found(architecture, family.learned))
        logger.info(
            "vllm-prune: %s embeds two different %d x %d images with %s the same "
            "(%s); checked in %.2f s",
            architecture,
            *DUMMY_IMAGE,
            learned_rows.describe(found),
            "as declared"
            if declares
            else "none to drop"
            if not found
            else f"{len(self._learned)} learned vectors, dropped when an image is pruned",  # type: ignore[arg-type]
            time.perf_counter() - started,
        )

    def _reading_tower(
        self, plans: Sequence[PrunePlan]
    ) -> AbstractContextManager[TowerCapture | None]:
        """While the tower runs: its [CLS] row and attention where a method of ``plans``
        reads them (the family declares its tower, else no such method gets here)."""
        wanted = frozenset(n for n in (VISION_ATTENTION, TOWER_ATTENTION) if needs(plans, n))
        tower = _declared_tower(self) if wanted else None
        if tower is None:
            return nullcontext(None)
        layers = _path(self, tower.layers)
        cores = [_path(layer, tower.core) for layer in layers]
        return capture_tower(cores, len(layers), wanted, sum_over_tensor_parallel)

    def _tower_fields(
        self, captured: TowerCapture | None, plans: Sequence[PrunePlan]
    ) -> list[TowerFields | None]:
        """Each image's share of what the tower measured, one entry per content row."""
        if captured is None:
            return [None] * len(plans)
        tower = _declared_tower(self)
        assert tower is not None  # it was read
        merge = tower.merge(self.config)  # type: ignore[attr-defined]
        rows = [sum(part.size for part, _ in plan.parts) for plan in plans]
        return list(captured.merged_tiles(merge, rows))

    def _pruned(
        self,
        image: torch.Tensor,
        plan: PrunePlan,
        llm: torch.nn.Module,
        tower: TowerFields | None = None,
    ) -> torch.Tensor:
        """The image's rows as they go on: vLLM's own where it keeps every content row."""
        reduced = prune_image(image, plan, llm, tower, self._learned)
        return image if reduced is None else self._kept_rows(reduced, plan)

    def _kept_rows(self, reduced: Reduced, plan: PrunePlan) -> torch.Tensor:
        """What a pruned image hands on: its kept rows' features."""
        return reduced.features


class GenericMropeModel(PositionOffsetsMixin, GenericPruneModel):
    """An M-RoPE model's pruning: each kept row carries its offset inside the image's grid
    (``positions``), and the prompt's positions are the model's own, computed as if no
    image were pruned."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        # Unpruned: vLLM's own positions and model state, nothing to add.
        self._init_positions(vllm_config, prunes=prunes(vllm_config))

    def _kept_rows(self, reduced: Reduced, plan: PrunePlan) -> torch.Tensor:
        """The kept rows' features, each followed by its offset inside the image's grid."""
        ((part, _),) = plan.parts  # one part (generic.declared_parts)
        _, width = part.grid or (1, part.size)
        features = reduced.features
        offsets = grid_offsets(reduced.indices.to(features.device), width).T
        return torch.cat([features, offsets.to(features.dtype)], dim=-1)

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[torch.Tensor, int]:
        own = super().get_mrope_input_positions  # type: ignore[misc]
        return positions_of_pruned(own, input_tokens, mm_features, _cut_of)


def _cut_of(feature: MultiModalFeatureSpec) -> tuple[int, int] | None:
    """(rows kept, rows unpruned) of a pruned image, or None."""
    if feature.modality != "image" or feature.data is None:
        return None
    if not wire.item_parts(feature.data):  # not pruned by the generic adapter
        return None
    counts = wire.item_counts(feature.data)
    return (counts.keep, counts.tokens) if counts.keep != counts.tokens else None


ENCODER_GRAPHS_REFUSAL = (
    "vllm-prune: encoder CUDA graphs (cudagraph_mm_encoder) run the vision tower without the "
    "step that prunes its rows; turn cudagraph_mm_encoder off, or serve without pruning "
    "with VLLM_PLUGINS=''"
)


def prunes(vllm_config: VllmConfig) -> bool:
    """Whether the generic path holds for the served architecture (decided here if vLLM
    has not built its processor in this process yet)."""
    architectures = vllm_config.model_config.architectures or []
    if not architectures:
        return False
    if architectures[0] not in DECISIONS:
        MULTIMODAL_REGISTRY.create_processor(vllm_config.model_config)  # decides
    decision = DECISIONS.get(architectures[0])
    return decision is not None and decision.refusal is None


def _declared_tower(model: torch.nn.Module) -> Tower | None:
    """The vision tower the served architecture's family declares, if any."""
    architectures = getattr(getattr(model, "config", None), "architectures", None) or []
    return family_of(architectures[0]).tower if architectures else None


def _path(root: object, path: str) -> Any:
    """``root.a.b`` for ``path`` "a.b"."""
    return functools.reduce(getattr, path.split("."), root)


def decoder(language_model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (``embed_input_ids``, ``layers``): the model itself or its ``.model``."""
    return language_model if hasattr(language_model, "layers") else language_model.model


def prune_image(
    image: torch.Tensor,
    plan: PrunePlan,
    llm: torch.nn.Module,
    tower: TowerFields | None = None,
    learned: torch.Tensor | None = None,
) -> Reduced | None:
    """The rows one image keeps: each part pruned on its own, in order, separator rows
    dropped; ``indices`` are the kept rows' places among the content rows. None where the
    image keeps every content row: it goes on whole, as vLLM made it (separators too).
    ``tower``: what the vision tower measured, one entry per content row. ``learned``:
    the structure vectors the model showed at start, for a family that declares no
    layout (``learned_rows``)."""
    parts = [part for part, _ in plan.parts]
    embedded = sum(part.embedded for part in parts)
    content = sum(part.size for part in parts)
    if embedded != image.shape[0]:
        raise ValueError(
            f"vllm-prune: the model returned {image.shape[0]} rows for an image whose "
            f"placeholder has {embedded} embed positions"
        )
    if plan.keep == embedded:  # kept whole, as vLLM made it
        return None
    if learned is not None:
        structure = learned_rows.structure_mask(image, learned)
        if bool(structure.any()):
            return _past_structure(image, structure, plan, llm)
    if plan.keep >= content:  # every content row and the first separators
        rows = sorted([*layout.content_rows(parts), *layout.kept_separators(parts, plan.keep)])
        return Reduced(features=image[torch.tensor(rows, device=image.device)],
                       indices=torch.tensor(rows))  # fmt: skip
    if embedded != content:
        image = image[torch.tensor(layout.content_rows(parts), device=image.device)]
    found = observe(llm, image, plan, tower, sum_over_ranks=sum_over_tensor_parallel)
    kept, indices, start = [], [], 0
    many = len(plan.parts) > 1
    for index, (part, keep) in enumerate(plan.parts):
        rows = torch.arange(start, start + part.size)
        if keep:
            reduced = reduce_plan(
                image[rows.to(image.device)],
                part.grid or (1, part.size),
                plan.for_part(keep),
                part=f"part{index}" if many else None,
                **rows_of(found, rows),
            )
            kept.append(reduced.features)
            indices.append(reduced.indices.cpu() + start)
        start += part.size
    return Reduced(features=torch.cat(kept), indices=torch.cat(indices))


def _past_structure(
    image: torch.Tensor, structure: torch.Tensor, plan: PrunePlan, llm: torch.nn.Module
) -> Reduced:
    """An undeclared family's image with learned structure rows: the method prunes its
    content rows as one part (its grid is not known), the structure rows go. The prompt
    holds ``keep`` rows (the processor counted every row), so a keep above the content
    rows keeps them all and the first structure rows after them."""
    content = (~structure).nonzero().flatten()
    if plan.keep >= content.numel():
        extra = structure.nonzero().flatten()[: plan.keep - content.numel()]
        rows = torch.cat([content, extra]).sort().values
        return Reduced(features=image[rows], indices=rows.cpu())
    rows = image[content]
    found = observe(llm, rows, plan, None, sum_over_ranks=sum_over_tensor_parallel)
    everything = torch.arange(content.numel())
    reduced = reduce_plan(rows, (1, content.numel()), plan, **rows_of(found, everything))
    return Reduced(features=reduced.features, indices=reduced.indices.cpu())


def _dummy_image_items(processor: BaseMultiModalProcessor, seed: int) -> list[Any]:
    """One image of ``DUMMY_IMAGE`` through the served model's processor, as a request
    without prune fields sends it (no metrics, no log line): its processed item. The
    image is blocks of 64 px in random colours: pixel noise averages to the same grey in
    every patch, so two noise images can embed alike; two such images differ in every
    patch and every pooled region."""
    width, height = DUMMY_IMAGE
    blocks = torch.randint(0, 256, (-(-height // 64), -(-width // 64), 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))  # fmt: skip
    pixels = blocks.repeat_interleave(64, dim=0).repeat_interleave(64, dim=1)[:height, :width]
    image = Image.fromarray(pixels.contiguous().numpy())
    tokenizer = processor.info.get_tokenizer()
    text = processor.dummy_inputs.get_dummy_text({"image": 1})
    inputs = ProcessorInputs(
        prompt=tokenizer.encode(text, add_special_tokens=False),
        mm_data_items=processor.info.parse_mm_data({"image": [image]}),
        hf_processor_mm_kwargs={},
    )
    return list(processor.apply(inputs, TimingContext())["mm_kwargs"]["image"])


def refusals(decision: Decision, hf_config: Any) -> dict[str, str | None]:
    """Per method, why the model of a decision that holds refuses it (None: it runs)."""
    rules = type("Rules", (GenericPruneProcessorMixin,), {"family": decision.family})
    return {m: rules.family_refusal(m, hf_config) for m in method_names()}
