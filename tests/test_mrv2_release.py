"""Our Model Runner V2 code against vLLM 0.34's own MRv2 code (``vllm/v1/worker/gpu/``).

vLLM 0.34 runs only MRv2 and has no CPU build, so each test runs a small script in a
subprocess whose ``vllm`` is 0.34's wheel sources (``devtools.vllm_check.release_sources``,
with its ``dist-info`` so ``importlib.metadata`` answers 0.34.0) beside this venv's torch:
- ``vllm.v1.worker.cpu.shm`` (0.34's own CPU runner imports it first) stands in for CUDA
  events, streams, pinned and UVA buffers; ``VLLM_TARGET_DEVICE=cpu`` makes 0.34 pick its
  CPU platform (else it asks for pinned memory, which needs an NVIDIA driver);
- the stub Triton ``cpu`` backend (``devtools/triton_cpu_stub``) and ``TRITON_INTERPRET=1``
  keep Triton on, so 0.34's kernels (positions, staged writes) run in the interpreter.

Covered, with exact values: 0.34's ``RopeState`` fed by our pruned positions
(``positions_of_pruned``); our ``PrunedPositionsState`` writing the kept rows' offsets
into it (whole and chunked prefills); which state ``resolve_model_state_cls`` and our hook
pick; ``EncoderRunner.gather_mm_embeddings`` over pruned encoder outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devtools import vllm_check

RELEASE = "0.34.0"
ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "devtools" / "triton_cpu_stub"


@pytest.fixture(scope="module")
def sources() -> Path:
    """0.34's wheel: its Python files and dist-info, downloaded once (PyPI, as
    tests/test_vllm_versions.py needs it too)."""
    return vllm_check.release_sources(RELEASE)


# The start of every script: 0.34 on CPU, Triton on (its interpreter runs the kernels).
PRELUDE = """
import vllm.v1.worker.cpu.shm  # first: CPU stand-ins for CUDA events, streams, buffers
import vllm
from vllm.triton_utils import HAS_TRITON
assert vllm.__version__ == "0.34.0" and vllm.__file__.startswith(SOURCES), vllm.__file__
assert HAS_TRITON
from types import SimpleNamespace
import numpy as np
import torch
from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
from vllm_prune.integration.model_state import PrunedPositionsState

def feature(name, offset, length, is_embed=None):
    place = PlaceholderRange(offset, length, None if is_embed is None else torch.tensor(is_embed))
    return MultiModalFeatureSpec(data=None, modality="image", identifier=name, mm_position=place)
"""

# A Qwen2-VL-like model whose positions are ours, and 0.34's RopeState (tests a and b).
# The prompt: T T [a a a a] T [b b] T T. Image a (grid 1x2x2) is whole; b (grid 1x2x3)
# is pruned to 2 of its 6 rows, so the prompt has 11 tokens (15 unpruned).
POSITIONS = """
from vllm.v1.token_buffer import TokenBuffer
from vllm.v1.worker.gpu.mm.rope import RopeState
from vllm_prune.integration.positions import grid_offsets, positions_of_pruned
from vllm_prune.integration.qwen2_vl import pruned_mrope_positions

GRIDS = {"a": (1, 2, 2), "b": (1, 2, 3)}  # (t, h, w) of each image's token grid
KEEP = {"b": 2}  # rows kept of each pruned image

def own(tokens, features):  # the model's own positions: it sees every image whole
    items = []
    for f in features:
        t, h, w = GRIDS[f.identifier]
        assert f.mm_position.length == t * h * w, f  # grown back by positions_of_pruned
        items.append((f.mm_position.offset, t, h, w, 1.0, t * h * w))
    return pruned_mrope_positions(tokens, items)

def cut_of(f):
    if f.identifier not in KEEP:
        return None
    t, h, w = GRIDS[f.identifier]
    return KEEP[f.identifier], t * h * w

model = SimpleNamespace(
    get_mrope_input_positions=lambda tokens, features: positions_of_pruned(
        own, tokens, features, cut_of
    )
)
T, I = 1, 9  # a text token, an image placeholder
PROMPT = TokenBuffer([T, T, I, I, I, I, T, I, I, T, T])  # as 0.34's Request holds it
FEATURES = [feature("a", 2, 4), feature("b", 7, 2)]
UNPRUNED, UNPRUNED_DELTA = own(
    [T, T, I, I, I, I, T, I, I, I, I, I, I, T, T], [feature("a", 2, 4), feature("b", 7, 6)]
)
MAX_REQS = 4
rope = RopeState(
    num_dims=3, max_num_reqs=MAX_REQS, max_num_tokens=32, max_model_len=64,
    device=torch.device("cpu"),
)
prefill_lens = torch.zeros(MAX_REQS, dtype=torch.int32)  # RequestState.prefill_len.gpu

def add_request(req_idx, tokens, features):  # DefaultModelState.add_request, then the runner
    rope.init_prefill_positions(req_idx, model, tokens, mm_features=features)
    prefill_lens[req_idx] = len(tokens)

def step(scheduled):
    # [(req_idx, computed, scheduled)] in batch order -> the step's positions [3, tokens]
    idx = torch.tensor([r for r, _, _ in scheduled], dtype=torch.int32)
    starts = torch.tensor(np.cumsum([0] + [n for *_, n in scheduled]), dtype=torch.int32)
    computed = torch.zeros(MAX_REQS, dtype=torch.int32)
    for r, c, _ in scheduled:
        computed[r] = c
    rope.prepare_positions(idx, starts, prefill_lens, computed)
    return rope.get_positions(int(starts[-1])).clone()
"""


def run_034(sources: Path, *pieces: str) -> str:
    """Runs the script made of ``pieces`` on vLLM 0.34; its stdout."""
    script = "\n".join(textwrap.dedent(p) for p in (PRELUDE, *pieces))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(sources), str(ROOT), str(STUB)]),
        "TRITON_INTERPRET": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_PLUGINS": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", f"SOURCES = {str(sources)!r}\n{script}"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.strip().endswith("ok"), done.stdout
    return done.stdout


def test_0_34_rope_state_takes_our_pruned_positions(sources):
    """``init_prefill_positions`` (a TokenBuffer in, ``.numpy()`` of each row out), the
    staged write, then ``prepare_positions`` (a Triton kernel) for a prefill, a chunk and a
    decode: the pruned run's placeholders at its grid's start, the rest unpruned."""
    run_034(
        sources,
        POSITIONS,
        """
        ours, delta = model.get_mrope_input_positions(PROMPT, FEATURES)
        EXPECTED = [  # b's two placeholders at (5, 5, 5); the tail where it is unpruned
            [0, 1, 2, 2, 2, 2, 4, 5, 5, 8, 9],
            [0, 1, 2, 2, 3, 3, 4, 5, 5, 8, 9],
            [0, 1, 2, 3, 2, 3, 4, 5, 5, 8, 9],
        ]
        assert ours.tolist() == EXPECTED and delta == -1 and UNPRUNED_DELTA == -5
        assert ours.device.type == "cpu"

        add_request(1, PROMPT, FEATURES)
        rope.apply_staged_writes()
        assert rope.read_prefill_positions(1, 11).tolist() == EXPECTED
        assert step([(1, 0, 11)]).tolist() == EXPECTED  # the whole prompt
        assert step([(1, 4, 5)]).tolist() == [row[4:9] for row in EXPECTED]  # a chunk
        assert step([(1, 11, 1)]).tolist() == [[10], [10], [10]]  # decode: 11 + delta
        assert step([(1, 13, 1)]).tolist() == [[12], [12], [12]]
        print("ok")
        """,
    )


def test_our_model_state_writes_the_kept_rows_offsets_into_0_34_positions(sources):
    """``PrunedPositionsState._write_offsets`` on 0.34's RopeState: request 0 (the pruned
    prompt, second in the batch) gets its kept rows' unpruned positions, request 2 (text
    only, first) keeps its own; once with the prompt cut inside image b, over two steps."""
    run_034(
        sources,
        POSITIONS,
        """
        # DefaultModelState.__init__ needs a whole VllmConfig; _write_offsets reads only this.
        state = object.__new__(PrunedPositionsState)
        state.rope_state = rope
        add_request(0, PROMPT, FEATURES)
        add_request(2, TokenBuffer([T] * 4), [])
        rope.apply_staged_writes()
        KEPT = [1, 5]  # b's rows kept (raster order in its 2x3 grid)
        b_offsets = grid_offsets(torch.tensor(KEPT), GRIDS["b"][2])
        assert b_offsets.tolist() == [[0, 0], [0, 1], [1, 2]]
        # The unpruned prompt's column of each pruned-prompt token.
        COLUMNS = [0, 1, 2, 3, 4, 5, 6, 7 + KEPT[0], 7 + KEPT[1], 13, 14]
        WANTED = UNPRUNED[:, COLUMNS]
        assert WANTED[:, 7:9].tolist() == [[5, 5], [5, 6], [6, 7]]

        def batch(requests, computed, starts):
            return SimpleNamespace(
                idx_mapping_np=np.array(requests), query_start_loc_np=np.array(starts),
                num_computed_prefill_tokens_np=np.array(computed),
            )

        # Step 1: request 2 whole (4 tokens), request 0's tokens 0..7 (b's first row at 7).
        offsets = torch.zeros(3, 12, dtype=torch.long)  # what embed_input_ids kept
        offsets[:, 4 + 7] = b_offsets[:, 0]
        state._write_offsets(offsets, batch([2, 0], [0, 0], [0, 4, 12]))
        positions = step([(2, 0, 4), (0, 0, 8)])
        assert positions[:, :4].tolist() == [[0, 1, 2, 3]] * 3
        assert torch.equal(positions[:, 4:], WANTED[:, :8])

        # Step 2: request 2 decodes, request 0's tokens 8..10 (b's second row at 8).
        offsets = torch.zeros(3, 4, dtype=torch.long)
        offsets[:, 1] = b_offsets[:, 1]
        state._write_offsets(offsets, batch([2, 0], [4, 8], [0, 1, 4]))
        positions = step([(2, 4, 1), (0, 8, 3)])
        assert positions[:, :1].tolist() == [[4]] * 3
        assert torch.equal(positions[:, 1:], WANTED[:, 8:])

        # Each offset added once, into request 0's rows only; decode after the prompt.
        assert torch.equal(rope.read_prefill_positions(0, 11).long(), WANTED)
        assert rope.read_prefill_positions(2, 4).tolist() == [[0, 1, 2, 3]] * 3
        assert not rope.read_prefill_positions(1, 64).any()
        assert step([(0, 11, 1)]).tolist() == [[10], [10], [10]]

        # The whole prompt in one step (re-added: a new request in the same slot).
        add_request(0, PROMPT, FEATURES)
        rope.apply_staged_writes()
        offsets = torch.zeros(3, 11, dtype=torch.long)
        offsets[:, 7:9] = b_offsets
        state._write_offsets(offsets, batch([0], [0], [0, 11]))
        assert torch.equal(step([(0, 0, 11)]), WANTED)
        print("ok")
        """,
    )


def test_0_34_resolves_our_hooked_state_and_the_one_it_would_pick(sources):
    """``resolve_model_state_cls``: a model with no hook gets vLLM's state (Default, or
    MambaHybrid for a hybrid LLM); ours gets that state with PrunedPositionsState first."""
    run_034(
        sources,
        """
        import torch.nn as nn
        from vllm.config import CompilationConfig
        from vllm.v1.worker.gpu.model_states import resolve_model_state_cls
        from vllm.v1.worker.gpu.model_states.default import DefaultModelState
        from vllm.v1.worker.gpu.model_states.encoder_only import EncoderOnlyModelState
        from vllm.v1.worker.gpu.model_states.mamba_hybrid import MambaHybridModelState
        from vllm_prune.integration.model_state import pruned_positions_state, vllms_model_state
        from vllm_prune.integration.positions import PositionOffsetsMixin

        def config(hybrid):
            # What resolve_model_state_cls reads of a VllmConfig: the attention layers
            # registered at load (a real CompilationConfig's, none here) and the LLM's kind.
            return SimpleNamespace(
                compilation_config=CompilationConfig(),
                model_config=SimpleNamespace(is_hybrid=hybrid, is_attention_free=False),
            )

        class Pruned(PositionOffsetsMixin, nn.Module):  # our hook, no vLLM state class
            def __init__(self, vllm_config, prunes=True):
                nn.Module.__init__(self)
                self.proj = nn.Linear(2, 2)
                self._init_positions(vllm_config, prunes)

        plain, hybrid = config(False), config(True)
        assert resolve_model_state_cls(plain, nn.Linear(2, 2)) is DefaultModelState
        assert resolve_model_state_cls(hybrid, nn.Linear(2, 2)) is MambaHybridModelState
        assert vllms_model_state(Pruned(plain), plain) is DefaultModelState
        assert vllms_model_state(Pruned(hybrid), hybrid) is MambaHybridModelState

        assert resolve_model_state_cls(plain, Pruned(plain)) is PrunedPositionsState
        ours = resolve_model_state_cls(hybrid, Pruned(hybrid))
        assert ours.__name__ == "PrunedMambaHybridModelState", ours
        assert ours.__mro__[1:4] == (
            PrunedPositionsState, MambaHybridModelState, DefaultModelState
        ), ours.__mro__
        assert pruned_positions_state(MambaHybridModelState) is ours  # one class per base
        # A model served unpruned keeps vLLM's state.
        assert resolve_model_state_cls(hybrid, Pruned(hybrid, prunes=False)) is (
            MambaHybridModelState
        )
        assert issubclass(EncoderOnlyModelState, DefaultModelState)
        assert pruned_positions_state(EncoderOnlyModelState).__mro__[1] is PrunedPositionsState
        from vllm.v1.worker.gpu.model_states.interface import ModelState
        try:
            pruned_positions_state(ModelState)
        except TypeError as error:
            assert "DefaultModelState" in str(error)
        else:
            raise AssertionError("a state not built on DefaultModelState was taken")
        print("ok")
        """,
    )


def test_0_34_encoder_runner_gathers_our_pruned_rows(sources):
    """``EncoderRunner.gather_mm_embeddings`` over pruned images: request "q" (Qwen-like,
    its placeholder is the 3 kept rows) and "x" (begin and end tokens around 4 kept rows,
    an ``is_embed`` mask), whole and cut inside each image; and our state's drafter path
    (``gather_mm_embeddings``) gets the same rows without the 3 position channels."""
    run_034(
        sources,
        """
        from vllm.v1.worker.gpu.mm.encoder_cache import EncoderCache
        from vllm.v1.worker.gpu.mm.encoder_runner import EncoderRunner

        HIDDEN = 4  # the LLM's width; our rows carry 3 position channels after it
        cache = EncoderCache()
        runner = EncoderRunner(
            model=torch.nn.Module(), max_num_tokens=64, hidden_size=HIDDEN,
            encoder_cache=cache, dtype=torch.float32, device=torch.device("cpu"),
        )
        ROWS = {
            "q": 100 + torch.arange(3 * (HIDDEN + 3), dtype=torch.float32).view(3, -1),
            "x": torch.arange(4 * (HIDDEN + 3), dtype=torch.float32).view(4, -1),
        }
        cache.encoder_outputs.update({"q-image": ROWS["q"], "x-image": ROWS["x"]})
        # q: T [3 rows] T T (6 tokens); x: T T T <begin> [4 rows] <end> T (10 tokens).
        cache.add_request("q", [feature("q-image", 1, 3)])
        cache.add_request("x", [feature("x-image", 3, 6, [False] + [True] * 4 + [False])])
        PROMPT_LEN = {"q": 6, "x": 10}

        def inputs(scheduled):  # [(req_id, computed, scheduled)] -> gather's arguments
            n = np.array([s for *_, s in scheduled], dtype=np.int32)
            return dict(
                req_ids=[r for r, _, _ in scheduled],
                total_num_scheduled_tokens=int(n.sum()),
                num_scheduled_tokens=n,
                query_start_loc=np.concatenate([[0], np.cumsum(n)]).astype(np.int32),
                prefill_lens=np.array([PROMPT_LEN[r] for r, _, _ in scheduled]),
                num_computed_tokens=np.array([c for _, c, _ in scheduled]),
            )

        def check(scheduled, rows, at):
            embeds, is_embed = runner.gather_mm_embeddings(**inputs(scheduled))
            assert len(embeds) == len(rows), embeds
            for got, (name, lo, hi) in zip(embeds, rows):
                assert torch.equal(got, ROWS[name][lo:hi]), (got, name, lo, hi)
                assert got.modality == "image"
            assert is_embed.nonzero().flatten().tolist() == at, is_embed
            return embeds

        # Whole prompts in one step: q's rows at 1..3, x's at 6 + 4..7.
        check([("q", 0, 6), ("x", 0, 10)], [("q", 0, 3), ("x", 0, 4)], [1, 2, 3, 10, 11, 12, 13])
        # Cut inside each image: q's tokens 0..1 and x's 0..5 (begin, rows 0 and 1) ...
        check([("q", 0, 2), ("x", 0, 6)], [("q", 0, 1), ("x", 0, 2)], [1, 6, 7])
        # ... then q's 2..5 (rows 1, 2) and x's 6..9 (rows 2, 3, then end).
        check([("q", 2, 4), ("x", 6, 4)], [("q", 1, 3), ("x", 2, 4)], [0, 1, 4, 5])
        # Decodes gather nothing.
        embeds, is_embed = runner.gather_mm_embeddings(**inputs([("q", 6, 1), ("x", 10, 1)]))
        assert embeds == [] and is_embed.tolist() == [False, False]

        # A drafter's gather through our state (DefaultModelState.__init__ needs a whole
        # VllmConfig): the same rows, without our channels.
        state = object.__new__(PrunedPositionsState)
        state.encoder_runner, state.mm_pruner, state._width = runner, None, HIDDEN
        given = inputs([("q", 2, 4), ("x", 6, 4)])
        batch = SimpleNamespace(
            req_ids=given["req_ids"], num_tokens=given["total_num_scheduled_tokens"],
            num_scheduled_tokens=given["num_scheduled_tokens"],
            query_start_loc_np=given["query_start_loc"], prefill_len_np=given["prefill_lens"],
            num_computed_tokens_np=given["num_computed_tokens"],
        )
        embeds, is_embed = state.gather_mm_embeddings(batch)
        assert [e.tolist() for e in embeds] == [
            ROWS["q"][1:3, :HIDDEN].tolist(), ROWS["x"][2:4, :HIDDEN].tolist()
        ]
        assert all(e.modality == "image" for e in embeds)
        assert is_embed.nonzero().flatten().tolist() == [0, 1, 4, 5]
        print("ok")
        """,
    )
