"""Models pruned by the generic adapter, end to end: InternVL, Gemma 3, Gemma 4, PaliGemma,
Idefics3, Mistral 3, LLaVA-OneVision and GLM-4.1V, each a tiny checkpoint built offline;
and a model it serves unpruned (GLM-OCR).

Each pruned family is served by our server and by plain vLLM with every plugin off
(and, for one family of each mechanism, by our server on two tensor-parallel ranks: one
plain run, one run of several tiles, rows closed by breaks, M-RoPE positions);
the servers run for that family's tests, then stop. ``make test-generic-tp2`` runs
the two-rank test for every family.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
import requests
import torch

from devtools.tiny_families import build_tiny_llava_next
from devtools.tiny_idefics_mistral_glm import (
    build_tiny_glm4v,
    build_tiny_idefics3,
    build_tiny_llava_onevision,
    build_tiny_mistral3,
)
from devtools.tiny_internvl_gemma import (
    build_tiny_gemma3,
    build_tiny_internvl,
    build_tiny_paligemma,
)
from devtools.tiny_llama4_gemma4 import build_tiny_gemma4
from devtools.tiny_mrope_families import (
    build_tiny_glm_ocr,
    build_tiny_paddleocr_vl,
    build_tiny_qwen2_5_omni_thinker,
)
from loadtests.probe import image_messages, noise_image_data_url
from vllm_prune import layout
from vllm_prune.integration.families import family_of
from vllm_prune.learned_rows import describe
from vllm_prune.methods import Context, get_method, method_names
from vllm_prune.methods.base import GRID, IN_TOWER, SCOUT, TOWER_ATTENTION, VISION_ATTENTION

from .conftest import (
    BLOCK_SIZE,
    TRACE_FILE,
    TWO_RANKS,
    Server,
    ask_traced,
    assert_same_on_two_ranks,
    kept_alone,
    plain_command,
    pruned_command,
    running,
    trace_lines_since,
)

TOWER = {VISION_ATTENTION, TOWER_ATTENTION, IN_TOWER}


@dataclass(frozen=True)
class Generic:
    name: str
    build: object  # (path) -> path
    architecture: str  # as config.json names it
    size: tuple[int, int]  # the test image
    runs: tuple[int, ...]  # its embed runs, as vLLM lays out its placeholder
    scout: bool  # the LLM is Llama-style: the scout methods run
    two_ranks: bool = False  # served on two ranks in CI (one family per layout)
    other_sizes: tuple[tuple[tuple[int, int], tuple[int, ...]], ...] = ()  # (size, runs)
    args: tuple[str, ...] = field(default=())
    # A family that declares its parts (separator rows, a grid that follows the image):
    # the test image's parts, by hand.
    declared: tuple[layout.Part, ...] = ()
    embeds: bool = False  # served with --enable-mm-embeds: precomputed image embeddings

    @property
    def embedded(self) -> int:
        """The image's embed positions in an unpruned prompt."""
        return sum(self.runs)

    @property
    def tokens(self) -> int:
        """N, the image's tokens as vLLM counts them (what ``keep`` is a share of)."""
        return self.embedded

    @property
    def content(self) -> int:
        """The image's content rows: N without its separator rows."""
        return sum(p.size for p in self.declared) if self.declared else self.embedded

    def refused(self) -> set[str]:
        """The methods the family cannot run: the tower methods where its tower is not
        declared (the in-tower cut always), the scout methods where its LLM is not
        Llama-style, the spatial methods where its grid is unknown."""
        refused = set()
        reads_tower = family_of(self.architecture).tower is not None
        for method in method_names():
            needs = get_method(method).needs
            if needs & TOWER and (IN_TOWER in needs or not reads_tower):
                refused.add(method)
            if SCOUT in needs and not self.scout:
                refused.add(method)
            if GRID in needs and not family_of(self.architecture).knows_grid:
                refused.add(method)
        return refused

    @property
    def probe(self) -> str:
        """A method the family runs: ``pooling`` where its grid is declared."""
        return "pooling" if family_of(self.architecture).knows_grid else "divprune"

    def runnable(self) -> list[str]:
        return [m for m in method_names() if m != "none" and m not in self.refused()]


FAMILIES = [
    # 896 x 448: two 448 px tiles and the thumbnail, 256 tokens each, in one run.
    # 448 x 448: one tile, no thumbnail.
    Generic("internvl", build_tiny_internvl, "InternVLForConditionalGeneration", (896, 448),
            (768,), scout=True, two_ranks=True, other_sizes=(((448, 448), (256,)),), embeds=True,
            # max_num_encoder_input_tokens 1024 (vLLM's budget: 1792, the largest image):
            # three 768-row images pruned fit one step; the tower encodes one at a time.
            args=("--max-num-batched-tokens", "1024", "--limit-mm-per-prompt", '{"image": 3}')),
    # <start_of_image>, 16 x 16 soft tokens, <end_of_image>.
    Generic("gemma3", build_tiny_gemma3, "Gemma3ForConditionalGeneration", (448, 448), (256,),
            scout=True, two_ranks=True),
    # <|image>, 11 x 23 soft tokens (the grid follows the image: not declared), <image|>.
    Generic("gemma4", build_tiny_gemma4, "Gemma4ForConditionalGeneration", (896, 448), (253,),
            scout=False),
    # 16 x 16 <image> before the prompt (one image per prompt).
    Generic("paligemma", build_tiny_paligemma, "PaliGemmaForConditionalGeneration", (448, 448),
            (256,), scout=False),
    # 2 x 1 tiles and the global image, 8 x 8 tokens each, between tile tags.
    Generic("idefics3", build_tiny_idefics3, "Idefics3ForConditionalGeneration", (896, 448),
            (64, 64, 64), scout=True),
    # 8 rows of 16 [IMG], each closed by [IMG_BREAK] (the last by [IMG_END]).
    Generic("mistral3", build_tiny_mistral3, "Mistral3ForConditionalGeneration", (896, 448),
            (16,) * 8, scout=True, two_ranks=True),
    # One run: the base image's 8 x 8, then the stitched crops' 8 x 16, each row followed by
    # an image_newline row (8 separators: 64 + 8 x 17 = 200 positions, 192 content tokens).
    Generic("llava-onevision", build_tiny_llava_onevision,
            "LlavaOnevisionForConditionalGeneration", (896, 448), (200,), scout=True, embeds=True,
            declared=(layout.Part(0, 64, (8, 8)), layout.Part(0, 128, (8, 16), newlines=1))),
    # One run of 11 x 22 <|image|> between <|begin_of_image|> and <|end_of_image|>, with
    # M-RoPE positions (the grid follows the image: image_grid_thw).
    Generic("glm4v", build_tiny_glm4v, "Glm4vForConditionalGeneration", (896, 448), (242,),
            scout=False, two_ranks=True, declared=(layout.Part(0, 242, (11, 22)),)),
    # M-RoPE families declared as GLM-4.1V's (Family.mrope_grid): one run of 11 x 22.
    Generic("glm-ocr", build_tiny_glm_ocr, "GlmOcrForConditionalGeneration", (896, 448),
            (242,), scout=False, declared=(layout.Part(0, 242, (11, 22)),)),
    Generic("paddleocr-vl", build_tiny_paddleocr_vl, "PaddleOCRVLForConditionalGeneration",
            (896, 448), (242,), scout=False, declared=(layout.Part(0, 242, (11, 22)),)),
    Generic("qwen2.5-omni", build_tiny_qwen2_5_omni_thinker,
            "Qwen2_5OmniForConditionalGeneration", (896, 448), (242,), scout=False,
            declared=(layout.Part(0, 242, (11, 22)),),
            args=("--limit-mm-per-prompt", '{"image": 2, "audio": 0, "video": 0}')),
]  # fmt: skip
TWO_RANKS_ALL = os.environ.get("VLLM_PRUNE_TEST_GENERIC_TP2") == "all"
ARGS = [
    "--enforce-eager", "--max-model-len", "4096", "--dtype", "float32",
    "--block-size", str(BLOCK_SIZE), "--served-model-name", "tiny",
    "--limit-mm-per-prompt", '{"image": 2}',
]  # fmt: skip


@dataclass
class Served:
    family: Generic
    pruned: Server
    plain: Server
    tp2: Server | None
    trace: Path


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.name)
def served(request, tmp_path_factory) -> Served:
    family: Generic = request.param
    root: Path = tmp_path_factory.mktemp(family.name)
    model = str(family.build(root / "model"))  # type: ignore[operator]
    args = [*ARGS, *family.args, *(["--enable-mm-embeds"] if family.embeds else [])]
    if family.name == "paligemma":  # one image per prompt
        args[args.index("--limit-mm-per-prompt") + 1] = '{"image": 1}'
    commands = {"pruned": pruned_command(model, *args), "plain": plain_command(model, *args)}
    if family.two_ranks or TWO_RANKS_ALL:
        commands["tp2"] = pruned_command(model, *args, "--tensor-parallel-size", "2")
    with running(root, commands, envs={"tp2": TWO_RANKS}) as started:
        yield Served(
            family, started["pruned"], started["plain"], started.get("tp2"), root / TRACE_FILE
        )


def ask(server: Server, family: Generic, extra: dict | None, seed: int = 11, size=None):
    return server.client.chat.completions.create(
        model="tiny",
        messages=image_messages("what color is the square ?", seed=seed, size=size or family.size),
        max_tokens=4,
        temperature=0.0,
        logprobs=True,
        top_logprobs=2,
        extra_body={**(extra or {}), "return_token_ids": True},
    )


def keep(n: int, ratio: float) -> int:
    return max(1, round(n * (1 - ratio)))


def logprobs(response) -> list[float]:
    return [t.logprob for t in response.choices[0].logprobs.content]


def test_none_and_no_fields_match_plain_vllm(served: Served):
    reference = ask(served.plain, served.family, None)
    for extra in (None, {"prune": "none"}):
        ours = ask(served.pruned, served.family, extra)
        assert ours.prompt_token_ids == reference.prompt_token_ids
        assert ours.choices[0].message.content == reference.choices[0].message.content
        assert logprobs(ours) == pytest.approx(logprobs(reference), rel=1e-5, abs=1e-6)
    pruned = ask(served.pruned, served.family, {"prune": served.family.probe, "prune_ratio": 0.75})
    assert logprobs(pruned) != pytest.approx(logprobs(reference), rel=1e-5, abs=1e-6)


def test_the_model_showed_at_start_which_rows_are_structure(served: Served):
    """At start the served weights embed two different 896 x 448 images: the rows they
    share are exactly the declared separators (LLaVA-OneVision's newline rows; none
    elsewhere), so the server started and says so."""
    family = served.family
    assert family.size == (896, 448) or not any(p.newlines for p in family.declared)
    parts = list(family.declared) or [layout.Part(0, run, None) for run in family.runs]
    rows = layout.separator_rows(parts)
    found = "as declared" if family_of(family.architecture).declares_layout else "none to drop"
    line = (
        f"vllm-prune: {family.architecture} embeds two different 896 x 448 images with "
        f"{describe(rows)} the same ({found}); checked in "
    )
    assert line in served.pruned.log.read_text()


def model_dir(served: Served) -> Path:
    return served.pruned.log.parent / "model"


def image_positions(served: Served, prompt: list[int]) -> list[bool]:
    """Which positions of an unpruned prompt hold the image's rows (its embed token id)."""
    config = json.loads((model_dir(served) / "config.json").read_text())
    config = config.get("thinker_config", config)  # an omni model: vLLM serves its thinker
    embed_id = next(config[k] for k in ("image_token_id", "image_token_index") if k in config)
    return [token == embed_id for token in prompt]


def test_counts_are_exact_for_every_method_ratio_keep_and_budget(served: Served):
    family = served.family
    unpruned = ask(served.pruned, family, {"prune": "none"})
    assert layout.runs_of(image_positions(served, unpruned.prompt_token_ids)) == list(family.runs)
    total = unpruned.usage.prompt_tokens
    for method in family.runnable():
        for ratio in (0.75, 0.889):
            response = ask(served.pruned, family, {"prune": method, "prune_ratio": ratio})
            expected = total - family.embedded + keep(family.tokens, ratio)
            assert response.usage.prompt_tokens == expected, (method, ratio)
    response = ask(served.pruned, family, {"prune": family.probe, "prune_keep": 40})
    assert response.usage.prompt_tokens == total - family.embedded + 40
    response = ask(served.pruned, family, {"prune": "random", "prune_budget": 30})
    assert response.usage.prompt_tokens == total - family.embedded + 30
    # Every token kept: the image as vLLM lays it out, separators included.
    response = ask(served.pruned, family, {"prune": "random", "prune_keep": family.tokens})
    assert response.usage.prompt_tokens == total
    if family.content < family.tokens:
        # A keep above the content rows keeps them all and the first separators.
        extra = {"prune": "random", "prune_keep": family.content + 2}
        response = ask(served.pruned, family, extra)
        assert response.usage.prompt_tokens == total - family.tokens + family.content + 2
    for size, runs in family.other_sizes:
        unpruned = ask(served.pruned, family, {"prune": "none"}, size=size)
        assert layout.runs_of(image_positions(served, unpruned.prompt_token_ids)) == list(runs)
        pruned = ask(served.pruned, family, {"prune": family.probe, "prune_ratio": 0.75}, size=size)
        kept = keep(sum(runs), 0.75)
        assert pruned.usage.prompt_tokens == unpruned.usage.prompt_tokens - sum(runs) + kept


def test_pruned_prompt_keeps_the_format_and_rows_are_the_methods_selection(served: Served):
    """``random`` (seeded, blind to the features) keeps, in each part, exactly the rows its
    own draw picks on that part's grid; every structure token stays in the prompt."""
    family = served.family
    unpruned = ask(served.pruned, family, {"prune": "none"}, seed=5).prompt_token_ids
    mask = image_positions(served, unpruned)
    extra = {"prune": "random", "prune_ratio": 0.75, "prune_seed": 7}
    messages = image_messages("what color is the square ?", seed=5, size=family.size)
    traced = ask_traced(served.pruned, served.trace, "tiny", messages, extra)
    pruned = ask(served.pruned, family, extra, seed=5).prompt_token_ids

    declared = family_of(family.architecture)
    tile = None
    if declared.tile is not None:
        from transformers import AutoConfig

        tile = declared.tile(AutoConfig.from_pretrained(model_dir(served)))
    parts = list(family.declared) or layout.parts_of(layout.runs_of(mask), declared.grid, tile)
    assert layout.run_lengths(parts) == list(family.runs)
    keeps = layout.part_keeps(parts, keep(family.tokens, 0.75))
    assert pruned == layout.shrink(unpruned, mask, layout.run_keeps(parts, keeps))
    assert len(pruned) == len(unpruned) - family.embedded + sum(keeps)

    random = get_method("random")
    names = [f"part{i}" if len(parts) > 1 else None for i in range(len(parts))]
    expected = {}
    for name, part, kept in zip(names, parts, keeps, strict=True):
        if kept:
            rows = torch.zeros(part.size, 4)
            ctx = Context(params={"prune_seed": 7})
            expected[(None, name)] = tuple(
                random.reduce(rows, part.grid or (1, part.size), kept, ctx).indices.tolist()
            )
    assert traced.kept == expected


def test_methods_the_family_cannot_run_are_refused_with_the_reason(served: Served):
    family = served.family
    document = requests.get(f"{served.pruned.url}/v1/prune/methods", timeout=10).json()
    support = {m["name"]: (m["supported"], m["refusal"]) for m in document["data"]}
    assert {m for m, (ok, _) in support.items() if not ok} == family.refused()
    for method in sorted(family.refused()):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(served.pruned, family, {"prune": method})
        body = caught.value.body
        assert body["param"] == "prune"
        assert body["message"].startswith(support[method][1])
        needs = get_method(method).needs
        # The first reason that applies, in the order the refusal checks them.
        reason = (
            "vision tower"
            if needs & TOWER
            else "token grid"
            if GRID in needs and not family_of(family.architecture).knows_grid
            else "scout pass"
        )
        assert reason in body["message"], (method, body["message"])
    assert ask(served.pruned, family, {"prune": family.probe}).usage.prompt_tokens > 0


@pytest.mark.parametrize(
    "served",
    [f for f in FAMILIES if f.two_ranks or TWO_RANKS_ALL],
    ids=lambda f: f.name,
    indirect=True,
)
def test_two_tensor_parallel_ranks_keep_what_one_keeps(served: Served):
    assert served.tp2 is not None
    family = served.family
    messages = image_messages("what color is the square ?", seed=23, size=family.size)
    for method in ["none", *family.runnable()]:
        extra = {"prune": method, "prune_ratio": 0.75}
        one = ask_traced(served.pruned, served.trace, "tiny", messages, extra)
        two = ask_traced(served.tp2, served.trace, "tiny", messages, extra)
        assert bool(one.kept) == (method != "none"), method
        assert_same_on_two_ranks(one, two, tolerance=1e-3)


@pytest.mark.parametrize(
    "served", [f for f in FAMILIES if f.name == "internvl"], ids=lambda f: f.name, indirect=True
)
def test_the_tower_encodes_a_step_within_the_encoder_budget(served: Served):
    """Three pruned 768-row images fit one step (the scheduler counts their kept rows)
    but not one tower batch (1024 rows, ``max_num_encoder_input_tokens``): the tower
    encodes them one by one, and each image keeps exactly the rows it keeps when sent alone
    (``divprune`` reads the features, so a batch mixed up would keep other rows). The
    three share one ``prune_budget`` (85 each), which also keeps them out of the encoder
    cache that the lone requests filled."""
    family = served.family
    seeds, kept = (31, 32, 33), 85
    alone = kept_alone(served.pruned, served.trace, seeds, family.size, kept)
    log_before = served.pruned.log.stat().st_size
    trace_before = served.trace.stat().st_size
    content = [
        {"type": "image_url", "image_url": {"url": noise_image_data_url(seed, family.size)}}
        for seed in seeds
    ]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": "what ?"}]}]
    response = served.pruned.client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=2,
        extra_body={"prune": "divprune", "prune_budget": 3 * kept},
    )
    lines = trace_lines_since(served.trace, trace_before)
    parts = len(alone[0])
    together = [
        {(line.rank, line.part): line.indices for line in lines[i * parts : (i + 1) * parts]}
        for i in range(len(seeds))
    ]
    assert together == alone
    unpruned = served.pruned.client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=1, extra_body={"prune": "none"}
    )
    assert response.usage.prompt_tokens == unpruned.usage.prompt_tokens - 3 * (768 - kept)
    with served.pruned.log.open() as log:
        log.seek(log_before)
        assert "the tower encodes 3 images in 3 batches" in log.read()


@pytest.mark.parametrize(
    "served",
    [f for f in FAMILIES if family_of(f.architecture).tower is not None],
    ids=lambda f: f.name,
    indirect=True,
)
def test_tower_methods_read_each_tiles_cls_row_as_transformers_computes_it(served: Served):
    """``cls_attention`` keeps, in each tile, the rows whose 2 x 2 patches that tile's [CLS]
    attends to most in the last layer of transformers' own tower (eager attention, the
    checkpoint's weights, the processor's tiles of the same image): the engine's reading
    of the tower, merged and cut into tiles, is the one the method ranks."""
    from PIL import Image
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    family = served.family
    seed = 5
    extra = {"prune": "cls_attention", "prune_ratio": 0.75}
    messages = image_messages("what color is the square ?", seed=seed, size=family.size)
    traced = ask_traced(served.pruned, served.trace, "tiny", messages, extra)

    url = noise_image_data_url(seed, family.size)
    image = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB")
    processor = AutoProcessor.from_pretrained(model_dir(served))
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    model = InternVLForConditionalGeneration.from_pretrained(
        model_dir(served), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        maps = model.model.vision_tower(pixel_values=pixels, output_attentions=True).attentions
    cls_row = maps[-1][:, :, 0, 1:].mean(1)  # [tiles, 32 * 32], mean over heads
    merged = cls_row.reshape(-1, 16, 2, 16, 2).sum(dim=(2, 4)).reshape(-1, 256)
    parts = layout.parts_of(list(family.runs), "square", 256)
    keeps = layout.part_keeps(parts, keep(family.tokens, 0.75))
    method = get_method("cls_attention")
    expected = {
        (None, f"part{i}"): tuple(
            method.reduce(
                torch.zeros(256, 4), (16, 16), kept, Context(cls_attention=merged[i])
            ).indices.tolist()
        )
        for i, kept in enumerate(keeps)
    }
    assert len(expected) == pixels.shape[0] == 3
    assert traced.kept == expected


def embeds_messages(embeds: torch.Tensor) -> list[dict]:
    buffer = io.BytesIO()
    torch.save(embeds, buffer)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_embeds", "image_embeds": encoded},
                {"type": "text", "text": "what color is the square ?"},
            ],
        }
    ]


@pytest.mark.parametrize(
    "served", [f for f in FAMILIES if f.embeds], ids=lambda f: f.name, indirect=True
)
def test_precomputed_image_embeds_are_pruned_where_the_method_reads_only_rows(served: Served):
    """A method that reads only the rows prunes precomputed embeddings as it prunes an
    image's; a family whose layout comes from the image itself (declared parts) gets a 400
    naming ``prune``. ``none`` is plain vLLM's answer either way."""
    family = served.family
    config = json.loads((model_dir(served) / "config.json").read_text())
    hidden = config["text_config"]["hidden_size"]
    embeds = torch.randn(family.embedded, hidden, generator=torch.Generator().manual_seed(3))
    messages = embeds_messages(embeds)

    def answer(server: Server, extra: dict | None):
        return server.client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=3, temperature=0.0, logprobs=True,
            extra_body={**(extra or {}), "return_token_ids": True},
        )  # fmt: skip

    reference = answer(served.plain, None)
    ours = answer(served.pruned, {"prune": "none"})
    assert ours.prompt_token_ids == reference.prompt_token_ids
    assert logprobs(ours) == pytest.approx(logprobs(reference), rel=1e-5, abs=1e-6)
    total = ours.usage.prompt_tokens
    if family.declared:
        for method in ("random", family.probe):
            with pytest.raises(openai.BadRequestError) as caught:
                answer(served.pruned, {"prune": method, "prune_ratio": 0.75})
            assert caught.value.body["param"] == "prune"
            assert "precomputed image embeddings" in caught.value.body["message"]
        return
    for method in ("random", family.probe, "divprune"):
        pruned = answer(served.pruned, {"prune": method, "prune_ratio": 0.75})
        assert pruned.usage.prompt_tokens == total - family.tokens + keep(family.tokens, 0.75)
    # A method that reads the tower's attention has no tower to read.
    tower_methods = [m for m in family.runnable() if get_method(m).needs & TOWER]
    for method in tower_methods:
        with pytest.raises(openai.BadRequestError) as caught:
            answer(served.pruned, {"prune": method, "prune_ratio": 0.75})
        assert caught.value.body["param"] == "prune"
        assert "precomputed image embeddings" in caught.value.body["message"]
    assert bool(tower_methods) == (family_of(family.architecture).tower is not None)
    assert answer(served.pruned, {"prune": "none"}).usage.prompt_tokens == total


# -- The model checks what is content (learned_rows) --------------------------------------

# LLaVA-NeXT under names of no family (tests/families_plugin): at 672 x 336 its image is
# the 24 x 24 base grid, then a 24 x 48 crop grid with a learned newline row after each row.
PLUGIN = Path(__file__).resolve().parent / "families_plugin"
NEXT_SIZE, NEXT_TOKENS, NEXT_NEWLINES = (672, 336), 576 + 24 * 49, 24


def plugin_env() -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(PLUGIN), os.environ.get("PYTHONPATH")) if p)
    }


def renamed(model: str, architecture: str) -> list[str]:
    overrides = json.dumps({"architectures": [architecture]})
    return pruned_command(model, *ARGS, "--hf-overrides", overrides)


@pytest.fixture(scope="module")
def renamed_next(tmp_path_factory) -> tuple[dict[str, Server], Path]:
    """LLaVA-NeXT undeclared and declared unpruned, one server each."""
    root: Path = tmp_path_factory.mktemp("renamed")
    model = str(build_tiny_llava_next(root / "model"))
    commands = {
        "undeclared": renamed(model, "UndeclaredLlavaNextForConditionalGeneration"),
        "unpruned": renamed(model, "UnprunedLlavaNextForConditionalGeneration"),
    }
    with running(root, commands, envs=dict.fromkeys(commands, plugin_env())) as started:
        yield started, root / TRACE_FILE


def test_a_family_without_a_declaration_drops_the_rows_the_model_shows_are_structure(
    renamed_next,
):
    """The check finds the newline rows (one learned vector); a pruned image's prompt
    drops N - keep; ``random`` draws among the content rows only (N minus the newlines);
    a keep above the content rows keeps them all and the first newline rows after them."""
    servers, trace = renamed_next
    server = servers["undeclared"]
    assert "1 learned vectors, dropped when an image is pruned" in server.log.read_text()
    messages = image_messages("what color is the square ?", seed=5, size=NEXT_SIZE)
    answer = functools.partial(server.client.chat.completions.create, model="tiny",
                               messages=messages, max_tokens=1)  # fmt: skip
    total = answer(extra_body={"prune": "none"}).usage.prompt_tokens
    extra = {"prune": "random", "prune_ratio": 0.75, "prune_seed": 7}
    traced = ask_traced(server, trace, "tiny", messages, extra)
    kept = keep(NEXT_TOKENS, 0.75)
    assert traced.prompt_tokens == total - NEXT_TOKENS + kept
    content = NEXT_TOKENS - NEXT_NEWLINES
    draw = get_method("random").reduce(
        torch.zeros(content, 4), (1, content), kept, Context(params={"prune_seed": 7})
    )
    assert traced.kept == {(None, None): tuple(draw.indices.tolist())}
    almost = answer(extra_body={"prune": "random", "prune_keep": NEXT_TOKENS - 10})
    assert almost.usage.prompt_tokens == total - 10
    support = requests.get(f"{server.url}/v1/prune/methods", timeout=10).json()["data"]
    refused = {m["name"] for m in support if not m["supported"]}
    assert "pooling" in refused and "divprune" not in refused  # its grid is not declared


def test_a_declaration_the_model_contradicts_stops_the_server_naming_the_rows(tmp_path):
    model = str(build_tiny_llava_next(tmp_path / "model"))
    command = renamed(model, "SquareLlavaNextForConditionalGeneration")
    with pytest.raises(RuntimeError, match="server exited"):
        with running(tmp_path, {"square": command}, envs={"square": plugin_env()}):
            pass
    message = (tmp_path / "square.log").read_text()
    assert (
        "SquareLlavaNextForConditionalGeneration's family declares its image's separator "
        "rows as no rows" in message
    )
    assert "but two different images share rows [" in message


def test_a_family_declared_unpruned_is_served_as_vllm_serves_it_and_says_why(renamed_next):
    server = renamed_next[0]["unpruned"]
    reason = "tests/families_plugin declares this family unpruned"
    document = requests.get(f"{server.url}/v1/prune/methods", timeout=10).json()
    support = {m["name"]: (m["supported"], m["refusal"]) for m in document["data"]}
    assert support["none"] == (True, None)
    assert all(ok is False and reason in why for m, (ok, why) in support.items() if m != "none")
    messages = image_messages("what color ?", seed=3, size=NEXT_SIZE)
    with pytest.raises(openai.BadRequestError) as caught:
        server.client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=1, extra_body={"prune": "divprune"}
        )
    assert caught.value.body["param"] == "prune"
    assert reason in caught.value.body["message"]
    full = server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    none = server.client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=1, extra_body={"prune": "none"}
    )
    assert full.usage.prompt_tokens == none.usage.prompt_tokens > NEXT_TOKENS
    assert "embeds two different" not in server.log.read_text()  # nothing to check
