"""The shipped ``shapes-llava``: what ``vllm-prune serve`` (and ``make serve``) serves when
no model is named, loaded by vLLM from its real weights (no ``load_format=dummy``).

Its unpruned accuracy on a fixed test split (the first 100 ``shapes`` test images, 400
questions) must stay far above chance: existence at least 90 %, colour, count and
location at least 70 % each. It is measured the way users measure it: ``vllm-prune
eval --benchmark shapes`` end to end through the server, with pooled and FastV settings
beside ``none``. The served first-token log-probabilities equal the training code's
forward pass on the same weights, unpruned and under the methods it can run itself
(``method_reducer``), so what was trained is what is served, pruned or not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

from devtools import shapes_llava
from devtools.train_shapes import IGNORE, Encoder, forward, method_reducer
from tests.conftest import BLOCK_SIZE, Server, running
from vllm_prune.eval.benchmarks import load_benchmark
from vllm_prune.eval.cli import main as eval_main
from vllm_prune.eval.client import data_url, messages
from vllm_prune.eval.sample import SHORT_ANSWER
from vllm_prune.eval.shapes import image_seed, make_scene, png_bytes, render, write_split

FLOORS = {"existence": 0.90, "color": 0.70, "count": 0.70, "location": 0.70}
FLOOR_IMAGES = 100  # test images 0-99: 100 questions of each type
VISUAL_TOKENS = 576
SIZE_CAP = 20 * 2**20


@pytest.fixture(scope="module")
def shapes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``vllm-prune serve`` with no model: the embedded default."""
    root = tmp_path_factory.mktemp("shapes-llava")
    command = [sys.executable, "-m", "vllm_prune.cli", "serve", "--block-size", str(BLOCK_SIZE)]
    with running(root, {"default": command}) as started:
        yield started["default"]


@pytest.fixture(scope="module")
def results(shapes_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("shapes-eval")
    # fmt: off
    argv = [
        "--url", shapes_server.url, "--benchmark", "shapes", "--data", str(root / "shapes"),
        "--shapes-images", str(FLOOR_IMAGES), "--methods", "none,pooling,fastv",
        "--ratios", "0.75", "--concurrency", "4", "--out", str(root / "out"), "--no-progress",
    ]
    # fmt: on
    assert eval_main(argv) == 0
    return json.loads((root / "out" / "results.json").read_text())


def test_default_model_is_the_shipped_checkpoint(shapes_server: Server) -> None:
    models = requests.get(f"{shapes_server.url}/v1/models", timeout=30).json()["data"]
    assert [model["id"] for model in models] == [shapes_llava.NAME]
    assert Path(models[0]["root"]) == shapes_llava.FOLDER


def test_checkpoint_is_small_and_in_vllms_layout() -> None:
    files = list(shapes_llava.FOLDER.iterdir())
    assert sum(path.stat().st_size for path in files) <= SIZE_CAP
    from safetensors import safe_open

    with safe_open(str(shapes_llava.FOLDER / shapes_llava.WEIGHTS), "pt") as weights:
        keys = set(weights.keys())
    # transformers 5 would save "model.vision_tower..."; vLLM 0.32 loads these names
    assert all(
        key.startswith(("vision_tower.vision_model.", "language_model.", "multi_modal_projector."))
        for key in keys
    )


def test_unpruned_accuracy_floors(results: dict) -> None:
    none = results["benchmarks"]["shapes"]["settings"]["none"]
    assert none["status"] == "ok" and none["samples"] == 4 * FLOOR_IMAGES
    scores = none["scores"]
    for kind, floor in FLOORS.items():
        assert scores[f"accuracy/{kind}"] >= floor, (kind, scores)


def test_pruned_settings_are_measured_on_shorter_prompts(results: dict) -> None:
    settings = results["benchmarks"]["shapes"]["settings"]
    for name in ("pooling-0.75", "fastv-0.75"):
        assert settings[name]["status"] == "ok" and settings[name]["samples"] == 4 * FLOOR_IMAGES
        shorter = settings["none"]["mean_prompt_tokens"] - settings[name]["mean_prompt_tokens"]
        assert shorter == VISUAL_TOKENS - 144
        # scored on every type (what they score is the finding, not a floor: see docs/choosing-a-method.md)
        assert set(settings[name]["scores"]) == set(settings["none"]["scores"])


# Methods whose choice does not hang on the features' last digits (random: its seed;
# pooling: the grid). DivPrune's greedy choice does: features 1e-5 apart (the two
# kernels' difference) swap 6 of its 144 tokens on test image 0.
@pytest.mark.parametrize("method", ["none", "random", "pooling"])
def test_served_logprobs_equal_the_training_forward(
    shapes_server: Server, tmp_path: Path, method: str
) -> None:
    write_split(tmp_path, "test", 2)
    samples = load_benchmark("shapes", tmp_path)
    encoder = Encoder()
    batch = encoder.batch("test", [0, 1])  # the same 8 questions, in the same order
    model = shapes_llava.load()
    pruned = {} if method == "none" else {"prune_ratio": 0.75}
    reduce = None if method == "none" else method_reducer(method, 0.75)
    with torch.no_grad():
        ours = torch.log_softmax(forward(model, batch, reduce).logits, dim=-1)
    for row, sample in enumerate(samples):
        # the position that predicts the answer's first token
        first = int(torch.nonzero(batch.labels[row] != IGNORE)[0])
        response = shapes_server.client.chat.completions.create(
            model=shapes_llava.NAME,
            messages=messages(sample),  # type: ignore[arg-type]
            max_tokens=1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=5,
            extra_body={"prune": method, **pruned},
        )
        (token,) = response.choices[0].logprobs.content
        served = {
            encoder.tokenizer.convert_tokens_to_ids(top.token): top.logprob
            for top in token.top_logprobs
        }
        assert max(served, key=served.get) == int(ours[row, first].argmax())
        for token_id, logprob in served.items():
            assert logprob == pytest.approx(float(ours[row, first, token_id]), abs=1e-4)


def test_readme_quickstart_answers_as_documented(shapes_server: Server) -> None:
    """The README's quickstart request (test image 1, "What color is the square?",
    pooling 0.75): the answer and the prompt lengths it prints."""
    image = png_bytes(render(make_scene(image_seed("test", 1))))
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "shapes.make_scene(1_000_000_001)" in readme and image_seed("test", 1) == 1_000_000_001
    question = f"What color is the square?\n{SHORT_ANSWER}"
    lengths = []
    for extra in ({"prune": "none"}, {"prune": "pooling", "prune_ratio": 0.75}):
        response = shapes_server.client.chat.completions.create(
            model=shapes_llava.NAME,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(image)}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
            max_tokens=16,
            temperature=0.0,
            extra_body=extra,
        )
        assert response.choices[0].message.content.strip() == "purple", extra
        lengths.append(response.usage.prompt_tokens)
    assert lengths == [596, 164]
    assert '# "purple"' in readme and "What color is the square?" in readme
    assert "# 596 unpruned -> 164 with 576 -> 144 visual tokens" in readme


def test_shapes_table_script_writes_the_table_and_both_figures(tmp_path: Path) -> None:
    """``loadtests/shapes_table.py`` (the closing notes' table and figures), reduced: two
    images, one ratio; its own traced server."""
    from loadtests import shapes_table
    from vllm_prune.methods.registry import method_names

    argv = ["shapes_table", "--out", str(tmp_path), "--images", "2", "--ratios", "0.75"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        shapes_table.main()
    summary = (tmp_path / "eval" / "summary.md").read_text()
    for method in method_names():
        assert f"| {method} |" in summary, method
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    settings = results["benchmarks"]["shapes"]["settings"]
    assert all(setting["status"] == "ok" for setting in settings.values())
    traced = [json.loads(line) for line in (tmp_path / "trace-keep144.jsonl").open()]
    assert traced and {line["keep"] for line in traced} == {144}
    overlay_methods = {json.loads(line)["method"] for line in (tmp_path / "trace.jsonl").open()}
    assert set(shapes_table.OVERLAY_METHODS) <= overlay_methods
    for figure in ("positions.png", "overlay.png"):
        assert (tmp_path / figure).read_bytes().startswith(b"\x89PNG"), figure
