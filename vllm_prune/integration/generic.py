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
  kept rows go back in order.

Whether the mechanism holds is decided per architecture when vLLM first builds the
processor (``decide``): one dummy image must lay out as runs of one placeholder id
that shrink consistently, and the model must not need M-RoPE positions or hold
separator rows that the family does not declare. Where it does not hold, the
processor is vLLM's, untouched, and ``GET /v1/prune/methods`` says why.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, supports_mrope
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseMultiModalProcessor,
    EncDecMultiModalProcessor,
    PromptUpdate,
    PromptUpdateDetails,
)

from .. import layout
from ..methods import method_names
from ..plan import PrunePlan, reduce_plan
from ..signals.observe import observe, rows_of
from ..spec import METHOD_FIELD
from . import wire
from .families import MROPE, Family, family_of
from .parallel import refuse_pipeline_parallel, sum_over_tensor_parallel
from .processing import PruneProcessorMixin, refuse

logger = logging.getLogger("vllm.prune")

MODELS_PACKAGE = "vllm.model_executor.models"
PREFIX = "Prune__"  # exported names: Prune__<vLLM module>__<vLLM class> (plugin.generic_targets)
# Decoders whose layers the scout pass runs (Llama-style layers as vLLM builds them).
SCOUT_DECODERS = frozenset({"llama", "mistral", "qwen2"})
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
    model = type(f"Prune{base.__name__}", (GenericPruneModel, base), {"__module__": __name__})
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
    """The served architecture name (config.json), else vLLM's class name."""
    architectures = getattr(processor.info.get_hf_config(), "architectures", None) or []
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
    if supports_mrope(base):
        return MROPE
    if "image" not in processor.info.get_supported_mm_limits():
        return "it takes no images"
    image = Image.new("RGB", DUMMY_IMAGE, (127, 127, 127))
    try:
        mm_items = processor.info.parse_mm_data({"image": [image]}, validate=False)
        processed = processor._apply_hf_processor_main(mm_items, {})
        ((full, mask, is_embed),) = placeholders(processor, mm_items, processed, {})
        _check_shrinks(full, mask, is_embed)
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
        return [
            layout.parts_of(layout.runs_of(mask), self.family.grid, tile)
            for _, mask, _ in placeholders(self, mm_items, processed, hf_kwargs)  # type: ignore[arg-type]
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
        return "the generic adapter does not read this model's vision tower"

    @classmethod
    def grid_refusal(cls, hf_config: Any) -> str | None:
        if cls.family.grid is None:
            return "vllm-prune does not know this model's token grid"
        return None

    @classmethod
    def scout_refusal(cls, hf_config: Any) -> str | None:
        decoder = hf_config.get_text_config().model_type
        if decoder in SCOUT_DECODERS:
            return None
        return (
            f"the scout pass runs Llama-style decoder layers ({', '.join(sorted(SCOUT_DECODERS))});"
            f" this model's LLM is '{decoder}'"
        )

    def _check_supported(self, method: str, mm_items: MultiModalDataItems) -> None:
        super()._check_supported(method, mm_items)
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
        parts = wire.item_parts(out_mm_kwargs["image"][item_idx])
        if not parts or sum(k for _, k in parts) == sum(p.size for p, _ in parts):
            return details
        full = details.full
        mask = [True] * len(full) if details.is_embed is None else details.is_embed(full).tolist()
        keeps = layout.run_keeps([p for p, _ in parts], [k for _, k in parts])
        return PromptUpdateDetails(full=layout.shrink(full, mask, keeps), is_embed=details.is_embed)

    return _with_content(update, content)


def _with_content(
    update: PromptUpdate, content: Callable[[int], PromptUpdateDetails]
) -> PromptUpdate:
    """A copy of a ``PromptReplacement`` / ``PromptInsertion`` with new content."""
    name = "replacement" if hasattr(update, "replacement") else "insertion"
    return dataclasses.replace(update, **{name: content})


class GenericPruneModel:
    """Mixed into vLLM's model class: prunes each image's rows part by part."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        if vllm_config.compilation_config.cudagraph_mm_encoder:
            refuse_encoder_graphs(vllm_config)
        refuse_pipeline_parallel(vllm_config.parallel_config.pipeline_parallel_size)
        super().__init__(vllm_config=vllm_config, prefix=prefix)  # type: ignore[call-arg]

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = wire.pop_plans(kwargs)
        embeddings = super().embed_multimodal(**kwargs)  # type: ignore[misc]
        if plans is None:
            return embeddings
        llm = decoder(self.get_language_model())  # type: ignore[attr-defined]
        return [
            prune_image(image, plan, llm) for image, plan in zip(embeddings, plans, strict=True)
        ]


def refuse_encoder_graphs(vllm_config: VllmConfig) -> None:
    """Encoder CUDA graphs run the vision tower without ``embed_multimodal``, so a pruned
    image would get every row: a model the generic path prunes does not start with them."""
    architectures = vllm_config.model_config.architectures or []
    if architectures and architectures[0] not in DECISIONS:
        MULTIMODAL_REGISTRY.create_processor(vllm_config.model_config)  # decides
    decision = DECISIONS.get(architectures[0]) if architectures else None
    if decision is not None and decision.refusal is None:
        raise ValueError(
            "vllm-prune: encoder CUDA graphs (cudagraph_mm_encoder) run the vision tower "
            "without the step that prunes its rows; turn cudagraph_mm_encoder off, or serve "
            "without pruning with VLLM_PLUGINS=''"
        )


def decoder(language_model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (``embed_tokens``, ``layers``): the model itself or its ``.model``."""
    return language_model if hasattr(language_model, "layers") else language_model.model


def prune_image(image: torch.Tensor, plan: PrunePlan, llm: torch.nn.Module) -> torch.Tensor:
    """The rows one image keeps: each part pruned on its own, in order."""
    sizes = [part.size for part, _ in plan.parts]
    if sum(sizes) != image.shape[0]:
        raise ValueError(
            f"vllm-prune: the model returned {image.shape[0]} rows for an image whose "
            f"placeholder has {sum(sizes)} embed positions"
        )
    if plan.keep == image.shape[0]:
        return image
    found = observe(llm, image, plan, sum_over_ranks=sum_over_tensor_parallel)
    kept, start = [], 0
    many = len(plan.parts) > 1
    for index, (part, keep) in enumerate(plan.parts):
        rows = torch.arange(start, start + part.size)
        start += part.size
        if keep == 0:
            continue
        reduced = reduce_plan(
            image[rows.to(image.device)],
            part.grid or (1, part.size),
            plan.for_part(keep),
            part=f"part{index}" if many else None,
            **rows_of(found, rows),
        )
        kept.append(reduced.features)
    return torch.cat(kept)


def refusals(decision: Decision, hf_config: Any) -> dict[str, str | None]:
    """Per method, why the model of a decision that holds refuses it (None: it runs)."""
    rules = type("Rules", (GenericPruneProcessorMixin,), {"family": decision.family})
    return {m: rules.family_refusal(m, hf_config) for m in method_names()}
