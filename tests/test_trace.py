"""``VLLM_PRUNE_TRACE``: the server records the tokens it kept, and ``analyze --trace`` plots them.

The session server writes its trace beside its log (``conftest.TRACE_FILE``). The end-to-end
test sends real requests and checks the new lines against the request (count, grid) and,
for the feature-blind methods, against the method classes run offline (exact positions).
"""

from __future__ import annotations

import base64
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loadtests.probe import image_messages, noise_image_data_url
from tests.conftest import TRACE_FILE, Server, trace_lines_since
from vllm_prune.eval.analyze import main as analyze_main
from vllm_prune.eval.analyze import newest_lines, trace_positions
from vllm_prune.methods import Context, get_method
from vllm_prune.observability import trace
from vllm_prune.observability.trace import TraceError, TraceLine, read_trace

GRID = (24, 24)  # the demo LLaVA: 336 px, 14 px patches
N = GRID[0] * GRID[1]
IMAGE_SEED = 90_417  # an image no other test sends: no cache hit, so it is encoded


def _line(method: str, indices: list[int], grid=(2, 3), part=None, merged=False) -> TraceLine:
    return TraceLine(method, len(indices), grid[0] * grid[1], grid, tuple(indices), merged, part)


def _write(path: Path, lines: list[TraceLine]) -> Path:
    path.write_text("".join(line.to_json() + "\n" for line in lines))
    return path


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300


# -- the record ------------------------------------------------------------------------------


def test_line_round_trip_and_checks(tmp_path: Path):
    line = _line("pooling", [0, 4], part="grid", merged=True)
    assert TraceLine.from_record(json.loads(line.to_json())) == line
    assert "part" not in json.loads(_line("fastv", [1]).to_json())  # only LLaVA-NeXT has parts

    bad = {
        "not JSON (Expecting": "{",
        "missing field 'indices'": '{"method":"x","keep":1,"tokens":6,"grid":[2,3]}',
        "does not hold": '{"method":"x","keep":1,"tokens":5,"grid":[2,3],"indices":[0]}',
        "for keep 2": '{"method":"x","keep":2,"tokens":6,"grid":[2,3],"indices":[1,1]}',
        "outside [0, 6)": '{"method":"x","keep":1,"tokens":6,"grid":[2,3],"indices":[6]}',
    }
    for message, text in bad.items():
        path = tmp_path / "trace.jsonl"
        path.write_text(line.to_json() + "\n\n" + text + "\n")
        with pytest.raises(TraceError, match=f"{path}:3: not a trace line") as error:
            read_trace(path)
        assert message in str(error.value)


def test_record_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    features = torch.randn(6, 4)
    pooled = get_method("pooling").reduce(features, (2, 3), 2, Context())
    picked = get_method("random").reduce(features, (2, 3), 2, Context(params={"prune_seed": 3}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(trace.ENV, raising=False)
    trace.record("pooling", features, (2, 3), pooled)
    assert list(tmp_path.iterdir()) == []  # unset: nothing at all

    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(trace.ENV, str(path))
    trace.record("pooling", features, (2, 3), pooled)
    trace.record("random", features, (2, 3), picked, part="base")
    everything = get_method("none").reduce(features, (2, 3), 6, Context())
    trace.record("none", features, (2, 3), everything)  # not pruned: no line
    lines = read_trace(path)
    assert [(x.method, x.merged, x.part) for x in lines] == [
        ("pooling", True, None),  # pooled means are not the tokens at their indices
        ("random", False, "base"),
    ]
    assert lines[1].indices == tuple(picked.indices.tolist()) and lines[1].grid == (2, 3)
    assert all(x.rank is None for x in lines)  # one rank: no rank field

    # Under tensor parallelism each rank writes its own line, naming its rank.
    monkeypatch.setattr(trace, "rank", lambda: 1)
    trace.record("random", features, (2, 3), picked)
    assert json.loads(path.read_text().splitlines()[-1])["rank"] == 1
    assert read_trace(path)[-1].rank == 1
    monkeypatch.setattr(trace, "rank", lambda: None)

    # A path that cannot be written never fails the request: a warning, once.
    monkeypatch.setenv(trace.ENV, str(tmp_path / "no-such-folder" / "trace.jsonl"))
    trace.record("random", features, (2, 3), picked)
    trace.record("random", features, (2, 3), picked)


def test_reduce_plan_records_each_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The one hook every family goes through (LLaVA-NeXT passes its grid part)."""
    from vllm_prune.plan import PrunePlan, reduce_plan

    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(trace.ENV, str(path))
    plan = PrunePlan("random", 5, {"prune_seed": 1}, torch.empty(0, dtype=torch.long))
    features = torch.randn(12, 3)
    reduced = reduce_plan(features, (3, 4), plan, part="grid")
    (line,) = read_trace(path)
    assert line.part == "grid" and line.keep == 5 and line.tokens == 12 and line.grid == (3, 4)
    assert line.indices == tuple(reduced.indices.tolist())


def _append_many(path: str, worker: int) -> None:
    for i in range(200):
        trace.append(path, _line(f"m{worker}", list(range(i % 6 + 1))))


def test_processes_share_a_file_without_locks(tmp_path: Path):
    path = str(tmp_path / "trace.jsonl")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    lines = read_trace(Path(path))  # every line parses: none interleaved
    assert len(lines) == 800 and {x.method for x in lines} == {"m0", "m1", "m2", "m3"}


# -- analyze --trace, on a written trace ------------------------------------------------------


def test_positions_from_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    lines = [
        _line("fastv", [0, 1]),
        _line("fastv", [1, 5]),
        _line("pooling", [4], merged=True),
        _line("fastv", [0], grid=(1, 2)),  # another grid: skipped by default
        _line("fastv", [2, 3], part="grid"),
    ]
    result, skipped = trace_positions(lines)
    assert result.grid == (2, 3) and skipped == 1
    assert result.counts["fastv"].tolist() == [1, 2, 0, 0, 0, 1]
    assert result.lines == {"fastv": 2, "pooling": 1, "fastv [grid]": 1}
    assert result.keeps["pooling"] == 1 and result.samples("fastv") == 2
    other, skipped = trace_positions(lines, (1, 2))
    assert list(other.counts) == ["fastv"] and skipped == 4

    path = _write(tmp_path / "trace.jsonl", lines)
    out = tmp_path / "positions.png"
    argv = ["positions", "--trace", str(path), "--methods", "fastv,pooling", "--out", str(out)]
    assert analyze_main(argv) == 0
    _assert_png(out)
    assert "1 trace lines on other grids than 2x3 skipped" in capsys.readouterr().err

    assert analyze_main([*argv[:-2], "--methods", "random", "--out", str(out)]) == 2
    assert "no trace lines for random; the trace has fastv, pooling" in capsys.readouterr().err


def test_overlay_draws_the_newest_line_of_each_method(tmp_path: Path):
    lines = [_line("fastv", [0]), _line("pooling", [1]), _line("fastv", [5]), _line("fastv", [2])]
    assert [(x.method, x.indices) for x in newest_lines(lines)] == [
        ("fastv", (2,)),
        ("pooling", (1,)),
    ]
    image = tmp_path / "image.png"
    Image.fromarray(np.full((40, 60, 3), 30, dtype=np.uint8)).save(image)
    out = tmp_path / "overlay.png"
    path = _write(tmp_path / "trace.jsonl", lines)
    argv = ["overlay", "--trace", str(path), "--image", str(image), "--out", str(out)]
    assert analyze_main(argv) == 0
    _assert_png(out)


def test_trace_and_offline_options_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture):
    path = _write(tmp_path / "trace.jsonl", [_line("fastv", [0])])
    with pytest.raises(SystemExit):
        analyze_main(["positions", "--trace", str(path), "--ratio", "0.5", "--out", "x.png"])
    assert "--ratio: offline only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze_main(["positions", "--images", str(tmp_path), "--methods", "fastv", "--out", "x"])
    err = capsys.readouterr().err
    assert "fastv selects from model signals" in err and "--trace FILE" in err


# -- end to end: what the server kept --------------------------------------------------------


def test_server_records_what_it_kept(
    server: Server, model_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = server.log.parent / TRACE_FILE
    start = path.stat().st_size if path.exists() else 0
    settings = [
        {"prune": "fastv", "prune_ratio": 0.75},
        {"prune": "pooling", "prune_ratio": 0.889},
        {"prune": "random", "prune_ratio": 0.75, "prune_seed": 7},
    ]
    for extra in settings:
        server.client.chat.completions.create(
            model=model_name,
            messages=image_messages("where is the red circle ?", seed=IMAGE_SEED),
            max_tokens=2,
            temperature=0.0,
            extra_body=extra,
        )
    lines = trace_lines_since(path, start)
    assert [(x.method, x.keep, x.tokens, x.grid) for x in lines] == [
        ("fastv", 144, N, GRID),  # one line per image: 576 -> 144
        ("pooling", 64, N, GRID),  # 576 -> 64
        ("random", 144, N, GRID),
    ]
    for line in lines:
        assert len(set(line.indices)) == line.keep and list(line.indices) == sorted(line.indices)
        assert 0 <= line.indices[0] and line.indices[-1] < N and line.part is None
    fastv, pooling, random = lines
    assert not fastv.merged and pooling.merged and not random.merged
    # Feature-blind methods: the server kept exactly what the method classes give offline.
    blank = torch.zeros(N, 1)
    seeded = Context(params={"prune_seed": 7})
    offline_random = get_method("random").reduce(blank, GRID, 144, seeded).indices.tolist()
    offline_pooling = get_method("pooling").reduce(blank, GRID, 64, Context()).indices.tolist()
    assert list(random.indices) == offline_random
    assert list(pooling.indices) == offline_pooling

    # The figures, from the server's own trace file (Fig. 2 and Fig. 3).
    image = tmp_path / "image.png"
    image.write_bytes(base64.b64decode(noise_image_data_url(IMAGE_SEED).partition(",")[2]))
    positions, overlay = tmp_path / "positions.png", tmp_path / "overlay.png"
    # fmt: off
    assert analyze_main(["positions", "--trace", str(path), "--methods", "fastv,pooling",
                         "--out", str(positions)]) == 0
    assert analyze_main(["overlay", "--trace", str(path), "--image", str(image),
                         "--methods", "fastv,pooling,random", "--out", str(overlay)]) == 0
    # fmt: on
    _assert_png(positions)
    _assert_png(overlay)
    assert str(overlay) in capsys.readouterr().out
