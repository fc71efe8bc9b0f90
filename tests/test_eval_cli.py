"""``vllm-prune eval`` end to end against the real test server (tiny LLaVA, noise answers).

The demo model's answers are noise, so nothing here asserts accuracy: only that every
sample is asked once per setting, the files and tables agree with ``score_benchmark`` on
the predictions, pruning really shortened the prompts, a refused method is recorded, and
a rerun asks only for what is missing (counted by the server's own request counter).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loadtests.probe import metric
from tests.conftest import Server, free_port
from vllm_prune.eval.analyze import count_positions
from vllm_prune.eval.analyze import main as analyze_main
from vllm_prune.eval.benchmarks import load_benchmark, score_benchmark
from vllm_prune.eval.cli import UsageError, benchmark_options
from vllm_prune.eval.cli import main as eval_main
from vllm_prune.eval.shapes import write_split
from vllm_prune.methods import Context, get_method

IMAGES = 4  # 16 questions
PRUNED = ("random-0.75", "random-0.889", "pooling-0.75", "pooling-0.889")
VISUAL_TOKENS = 576  # the demo LLaVA at 336 px


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval")


def _args(url: str, model: str, root: Path, *extra: str) -> list[str]:
    # fmt: off
    return [
        "--url", url, "--model", model,
        "--benchmark", "shapes", "--data", str(root / "shapes"), "--shapes-images", str(IMAGES),
        "--methods", "none,random,pooling,bogus", "--ratios", "0.75,0.889",
        "--concurrency", "4", "--max-tokens", "4", "--out", str(root / "out"), "--no-progress",
        *extra,
    ]
    # fmt: on


def _requests(server: Server) -> float:
    return metric(server.metrics_text(), "vllm_prune_requests_total")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(server: Server, model_name: str, run_dir: Path) -> subprocess.CompletedProcess:
    """The whole grid once, through the installed command's dispatch (``vllm_prune.cli eval``)."""
    before = _requests(server)
    done = subprocess.run(
        [sys.executable, "-m", "vllm_prune.cli", "eval", *_args(server.url, model_name, run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # 16 questions x 5 settings reach the model; the middleware answers 'bogus' itself.
    assert _requests(server) - before == 16 * 5
    return done


def test_predictions_tables_and_plot(first_run: subprocess.CompletedProcess, run_dir: Path):
    out = run_dir / "out"
    samples = load_benchmark("shapes", run_dir / "shapes")
    assert len(samples) == 4 * IMAGES
    folder = out / "predictions" / "shapes"
    files = sorted(p.name for p in folder.glob("*.jsonl"))
    assert files == sorted(f"{name}.jsonl" for name in ("none", *PRUNED))  # none for bogus

    results = json.loads((out / "results.json").read_text())["benchmarks"]["shapes"]["settings"]
    with (out / "summary.csv").open() as handle:
        table = {(row["method"], row["ratio"]): row for row in csv.DictReader(handle)}
    assert set(table) == {("none", "")} | {
        (m, r) for m in ("random", "pooling", "bogus") for r in ("0.75", "0.889")
    }
    assert float(table[("none", "")]["avg_percent_of_none"]) == 100.0

    tokens = {}
    for name in ("none", *PRUNED):
        lines = _lines(folder / f"{name}.jsonl")
        assert sorted(line["id"] for line in lines) == sorted(s.id for s in samples)
        assert all(isinstance(line["answer"], str) for line in lines)
        answers = {line["id"]: line["answer"] for line in lines}
        expected = score_benchmark("shapes", [(s, answers[s.id]) for s in samples])
        assert results[name]["scores"] == expected
        method, _, ratio = name.partition("-")
        assert float(table[(method, ratio)]["shapes"]) == expected["accuracy"]
        tokens[name] = {line["id"]: line["prompt_tokens"] for line in lines}

    # Pruning happened on every request: same question, fewer visual tokens.
    for name, keep in (("pooling-0.75", 144), ("random-0.75", 144), ("pooling-0.889", 64)):
        for sample in samples:
            assert tokens["none"][sample.id] - tokens[name][sample.id] == VISUAL_TOKENS - keep

    for ratio in ("0.75", "0.889"):
        assert table[("bogus", ratio)]["shapes"] == "refused"
        assert results[f"bogus-{ratio}"]["status"] == "refused"
        assert "bogus" in results[f"bogus-{ratio}"]["message"]
    summary = (out / "summary.md").read_text()
    assert "| none | - | 100.0% |" in summary and "100.0% |" in summary
    assert "refused by the server" in summary and "got 'bogus'" in summary
    assert summary in first_run.stdout
    # Every metric of shapes (its question types), per setting, from the same scores.
    section = summary.split("## shapes: every metric\n\n", 1)[1].split("\n\n", 1)[0]
    header, _rule, *rows = section.splitlines()
    metrics = header.strip("| ").split(" | ")[2:]
    assert metrics[0] == "accuracy" and "accuracy/count" in metrics
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| none", "-"],
        *(["| " + m, r] for r in ("0.75", "0.889") for m in ("random", "pooling")),
    ]  # the main table's order; bogus was refused: no scores
    cells = dict(zip(metrics, rows[2].strip("| ").split(" | ")[2:], strict=True))
    for name, value in results["pooling-0.75"]["scores"].items():
        assert cells[name] == f"{value * 100:.1f}"

    with Image.open(out / "summary.png") as image:
        image.verify()
    with Image.open(out / "summary.png") as image:
        assert image.format == "PNG" and image.size[0] > 200


def test_rerun_asks_only_for_missing_answers(
    first_run: subprocess.CompletedProcess,
    server: Server,
    model_name: str,
    run_dir: Path,
    capsys: pytest.CaptureFixture[str],
):
    out = run_dir / "out"
    before = _requests(server)
    assert eval_main(_args(server.url, model_name, run_dir)) == 0
    assert _requests(server) == before  # everything was answered: nothing re-asked

    # An interrupted run: 12 complete lines, then a line cut mid-write.
    path = out / "predictions" / "shapes" / "random-0.75.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:12]) + lines[12][:25])
    capsys.readouterr()
    before_random = metric(server.metrics_text(), "vllm_prune_requests_total", method="random")
    assert eval_main(_args(server.url, model_name, run_dir)) == 0
    err = capsys.readouterr().err
    assert f"{path}:13: incomplete last line" in err
    after = server.metrics_text()
    assert metric(after, "vllm_prune_requests_total") - before == 4
    assert metric(after, "vllm_prune_requests_total", method="random") - before_random == 4
    repaired = _lines(path)  # every line parses again
    assert len(repaired) == 16 and len({line["id"] for line in repaired}) == 16

    # A broken line that is not the last is not ours: stop, naming the line.
    path.write_text("".join(lines[:3]) + "not json\n" + "".join(lines[3:]))
    assert eval_main(_args(server.url, model_name, run_dir)) == 2
    assert f"{path}:4: not a prediction record" in capsys.readouterr().err

    # Resuming with another answer length would mix two runs in one file.
    assert eval_main(_args(server.url, model_name, run_dir, "--max-tokens", "8")) == 2
    assert "max_tokens: 4 then, 8 now" in capsys.readouterr().err
    path.write_text("".join(lines))


def test_unreachable_server_fails_clearly(
    model_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there once closed
    assert eval_main([*_args(url, model_name, tmp_path), "--retries", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect after 1 retries" in err and "is the server running?" in err
    assert not (tmp_path / "out" / "predictions").exists()


def test_report_only_rewrites_the_summary(first_run: subprocess.CompletedProcess, run_dir: Path):
    out = run_dir / "out"
    (out / "summary.md").unlink()
    assert eval_main(["--out", str(out), "--report-only"]) == 0
    assert "| pooling | 0.75 | 25.0% |" in (out / "summary.md").read_text()


# -- vllm-prune analyze (offline: the method classes on the images' pixel patches) ------


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analyze-shapes")
    write_split(root, "test", 3)
    return root


def test_analyze_positions(shapes_images: Path, tmp_path: Path):
    images = [Image.open(p) for p in sorted((shapes_images / "images").glob("*.png"))]
    methods = ["none", "random", "pooling", "divprune", "dart"]
    result = count_positions(iter(images), methods, 0.75, seed_per_image=False)
    assert result.images == 3 and result.keep == 144 and result.grid == (24, 24)
    for method in methods:
        assert result.counts[method].sum() == 3 * (576 if method == "none" else 144)
    # The server's default prune_seed is the same for every request: same positions.
    assert set(result.counts["random"].tolist()) == {0, 3}
    grid = torch.zeros(576, 1)
    pooled = get_method("pooling").reduce(grid, (24, 24), 144, Context()).indices
    assert (np.flatnonzero(result.counts["pooling"]) == pooled.numpy()).all()

    out = tmp_path / "positions.png"
    # fmt: off
    argv = ["positions", "--benchmark", "shapes", "--data", str(shapes_images),
            "--methods", "random,pooling,dart", "--seed-per-image", "--out", str(out)]
    # fmt: on
    assert analyze_main(argv) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_analyze_overlay(shapes_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "overlay.png"
    # fmt: off
    argv = ["overlay", "--images", str(shapes_images / "images"), "--index", "1",
            "--methods", "random,pooling,divprune", "--ratio", "0.889", "--out", str(out)]
    # fmt: on
    assert analyze_main(argv) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 400
    # Methods that need the model's attention or text are refused, not faked.
    with pytest.raises(SystemExit):
        analyze_main(
            ["overlay", "--images", str(shapes_images), "--methods", "fastv", "--out", "x"]
        )
    assert "fastv selects from model signals" in capsys.readouterr().err


def test_plain_vllm_endpoint(
    plain_server: Server, model_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Plain vLLM answers ``none``; asked to prune, the summary shows it did not."""
    # fmt: off
    argv = ["--url", plain_server.url, "--benchmark", "shapes", "--data", str(tmp_path / "s"),
            "--shapes-images", "1", "--methods", "none,pooling", "--ratios", "0.75",
            "--max-tokens", "2", "--out", str(tmp_path / "out"), "--no-progress"]
    # fmt: on
    assert eval_main(argv) == 0  # --model left out: the server's only model
    err = capsys.readouterr().err
    assert "has no /v1/prune/methods" in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["model"] == model_name
    settings = results["benchmarks"]["shapes"]["settings"]
    assert settings["none"]["status"] == "ok" and settings["none"]["samples"] == 4
    # The field is ignored: an answer, but a prompt as long as none's, flagged as such.
    pooling = settings["pooling-0.75"]
    assert pooling["status"] == "ok"
    assert pooling["mean_prompt_tokens"] == settings["none"]["mean_prompt_tokens"]
    assert "pooling-0.75: prompts are not shorter than none's" in err
    assert "the server did not prune" in (tmp_path / "out" / "summary.md").read_text()


def test_benchmark_options_follow_the_loaders():
    options = benchmark_options(
        ["pope:categories=adversarial,popular", "mmbench:circular=true", "mmbench:split=x"],
        ["pope", "mmbench"],
    )
    assert options == {
        "pope": {"categories": ["adversarial", "popular"]},  # a sequence: a list
        "mmbench": {"circular": True, "split": "x"},
    }
    assert benchmark_options(["split=val"], ["gqa", "shapes"]) == {
        "gqa": {"split": "val"},
        "shapes": {"split": "val"},
    }
    with pytest.raises(UsageError, match="shapes has no option 'nope'; it has \\['split'\\]"):
        benchmark_options(["shapes:nope=1"], ["shapes"])
    with pytest.raises(UsageError, match="'mme' is not a --benchmark"):
        benchmark_options(["mme:subtasks=OCR"], ["shapes"])
