"""loadtests/: the parsing and arithmetic on their own, then a short sweep against the test
server and the KV-capacity benchmark on a server of its own, both through ``vllm bench serve``.
"""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
import requests

from loadtests import kv_capacity, sweep
from loadtests.bench import Workload, bench_argv, latency_percentiles, summarize_result
from loadtests.engine_log import Iteration, LogTail, parse_iterations
from loadtests.local_server import KvConfig, kv_config
from loadtests.probe import metric
from loadtests.report import COLUMNS, Row, markdown_table
from loadtests.scrape import Sample, parse_counters, parse_sample, sample_sums, summarize
from tests.conftest import Server
from vllm_prune.demo import SERVE_ARGS as DEMO_ARGS

VISUAL = 576  # the demo LLaVA at 336 px, at any image size (resized to 336)
KEPT = {"none": 576, "pooling-0.75": 144}

# A /metrics page as vLLM writes it: two engines (data parallelism), a label value with a
# space and a brace, comments, a counter with a timestamp, and a histogram in between.
PAGE = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny llava {a}"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="tiny llava {a}"} 0.5
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 9.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 1.0
vllm:num_preemptions_total{engine="0",model_name="m"} 5.0 1700000000000
vllm:prompt_tokens_total{engine="0",model_name="m"} 1224.0
vllm_prune_requests_total{method="none"} 2.0
vllm_prune_requests_total{method="pooling"} 1.0
vllm_prune_visual_tokens_before_total{method="none"} 1152.0
vllm_prune_visual_tokens_before_total{method="pooling"} 576.0
vllm_prune_visual_tokens_after_total{method="none"} 1152.0
vllm_prune_visual_tokens_after_total{method="pooling"} 144.0
"""


def test_gauges_are_summed_over_engines():
    sample = parse_sample(PAGE, t=1.5)
    assert sample == Sample(t=1.5, kv_usage=0.75, running=7, waiting=2)


def test_line_scan_agrees_with_prometheus_client():
    counters = parse_counters(PAGE)
    for name, value in counters.items():
        assert value == metric(PAGE, name), name
    assert counters["vllm:num_preemptions_total"] == 5.0
    assert counters["vllm_prune_visual_tokens_after_total"] == 1296.0
    # A name that is the prefix of another is not summed with it.
    assert sample_sums(PAGE, ("vllm:num_requests_waiting",)) == {"vllm:num_requests_waiting": 2.0}


def test_gauge_summary():
    samples = [
        Sample(0.0, 0.0, 0, 0),  # idle: not in the mean
        Sample(0.1, 0.4, 4, 0),
        Sample(0.2, 0.9, 9, 3),
        Sample(0.3, 1.0, 7, 5),
        Sample(0.4, 0.5, 10, 0),
    ]
    summary = summarize(samples)
    assert summary.samples == 5
    assert summary.kv_usage_peak == 1.0
    assert summary.kv_usage_mean == pytest.approx((0.4 + 0.9 + 1.0 + 0.5) / 4)
    assert (summary.running_peak, summary.waiting_peak) == (10, 5)
    assert summarize([]).kv_usage_mean == 0.0


def _bench_result() -> dict:
    """The shape of a ``vllm bench serve --save-detailed`` result: 3 requests, 1 failed."""
    result = {
        "completed": 2,
        "failed": 1,
        "duration": 2.0,
        "request_throughput": 1.0,
        "output_throughput": 16.0,
        "total_input_tokens": 360,
        "input_lens": [180, 180, 612],  # the failed one keeps the client's own estimate
        "errors": ["", "", "Traceback ...\naiohttp.ClientOSError: reset\n"],
        "start_times": [0.0, 0.1, 0.2],
        "ttfts": [0.5, 0.5, 0.0],
        "latencies": [1.0, 1.0, 0.0],
    }
    for name in ("ttft", "e2el"):
        for p in (50, 90, 99):
            result[f"p{p}_{name}_ms"] = float(p + (1000 if name == "e2el" else 0))
    return result


def test_bench_result_summary():
    summary = summarize_result(_bench_result())
    assert (summary.completed, summary.failed) == (2, 1)
    assert summary.mean_prompt_tokens == 180.0
    assert summary.prompt_tokens == (180, 180)
    assert summary.first_error == "aiohttp.ClientOSError: reset"
    assert latency_percentiles(_bench_result()) == {
        "ttft_p50_ms": 50.0,
        "ttft_p90_ms": 90.0,
        "ttft_p99_ms": 99.0,
        "e2el_p50_ms": 1050.0,
        "e2el_p90_ms": 1090.0,
        "e2el_p99_ms": 1099.0,
    }


def test_bench_argv_parses_with_vllms_own_parser(tmp_path: Path):
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    workload = Workload(
        base_url="http://h:1",
        model="served",
        tokenizer="/models/tok",
        num_prompts=7,
        input_len=16,
        output_len=9,
        image_sizes=((336, 336), (640, 480)),
    )
    argv = bench_argv(
        workload, {"prune": "pooling", "prune_ratio": 0.75}, 3, 5, tmp_path / "r.json"
    )
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(argv)
    # (height, width, frames) -> probability, as vLLM's random-mm dataset reads it
    assert args.random_mm_bucket_config == {(336, 336, 1): 0.5, (480, 640, 1): 0.5}
    assert args.extra_body == {"prune": "pooling", "prune_ratio": 0.75}
    assert (args.model, args.served_model_name) == ("/models/tok", "served")
    assert (args.max_concurrency, args.seed, args.num_prompts) == (3, 5, 7)
    assert args.ignore_eos and args.save_detailed


def test_largest_fitting_searches_monotone_predicates():
    for capacity in (0, 1, 2, 7, 8, 9, 31, 100):
        asked = []

        def fits(n: int, capacity: int = capacity, asked: list = asked) -> bool:
            asked.append(n)
            return n <= capacity

        assert kv_capacity.largest_fitting(fits, limit=100) == capacity
        assert len(asked) == len(set(asked)), asked  # no probe twice
        assert max(asked) <= 100


def _probe(**changes) -> kv_capacity.Probe:
    fields = dict(
        setting="none",
        n=4,
        completed=4,
        failed=0,
        preemptions=0,
        scheduled_peak=4,
        kv_usage_peak=0.9,
        steps=130,
        mean_prompt_tokens=612.0,
        visual_tokens_kept=576.0,
    )
    return kv_capacity.Probe(**(fields | changes))


def test_a_burst_fits_when_all_ran_in_one_step_without_preemption():
    assert _probe().fits
    assert not _probe(preemptions=1).fits  # a running request could not grow
    assert not _probe(scheduled_peak=3).fits  # one waited for another to end
    assert not _probe(failed=1, completed=3).fits


# Lines of a real server log (vLLM 0.32, --enable-logging-iteration-details).
SERVER_LOG = """\
(APIServer pid=12589) INFO 11-24 07:10:12 [loggers.py:199] Engine 000: Iteration(0): 1 context \
requests, 586 context tokens, 0 generation requests, 0 generation tokens, iteration elapsed \
time: 21.69 ms, CPU KV cache usage: 4.8%, encoder inputs: 1, encoder output embeddings: 576
(APIServer pid=12589) INFO 11-24 07:10:12 [launcher.py:195] Route: /metrics, Methods: GET
(APIServer pid=12589) INFO 11-24 07:10:12 [loggers.py:199] Engine 000: Iteration(1): 4 context \
requests, 1760 context tokens, 1 generation requests, 1 generation tokens, iteration elapsed \
time: 42.88 ms, CPU KV cache usage: 19.3%, encoder inputs: 3, encoder output embeddings: 1728
(APIServer pid=12589) INFO 11-24 07:10:12 [loggers.py:199] Engine 000: Iteration(3): 0 context \
requests, 0 context tokens, 5 generation requests, 5 generation tokens, iteration elapsed \
time: 4.79 ms, CPU KV cache usage: 23.8%
"""


def test_iteration_log_lines():
    assert parse_iterations(SERVER_LOG) == [
        Iteration(index=0, prefilling=1, decoding=0, kv_usage=pytest.approx(0.048)),
        Iteration(index=1, prefilling=4, decoding=1, kv_usage=pytest.approx(0.193)),
        Iteration(index=3, prefilling=0, decoding=5, kv_usage=pytest.approx(0.238)),
    ]
    assert [i.scheduled for i in parse_iterations(SERVER_LOG)] == [1, 5, 5]


def test_log_tail_reads_what_was_appended(tmp_path: Path):
    log = tmp_path / "server.log"
    log.write_text("before\n")
    tail = LogTail(log)
    tail.start()
    with log.open("a") as handle:
        handle.write("after\n")
    assert tail.read() == "after\n"


def test_ideal_capacity_counts_whole_blocks():
    kv = KvConfig(num_blocks=64, block_size=32)  # 63 usable
    tokens = kv_capacity.kv_tokens_per_request(prompt_tokens=612, output_len=64)
    assert tokens == 675  # the last generated token never enters the KV cache
    in_tokens, in_blocks = kv_capacity.ideal_capacity(kv, tokens)
    assert in_tokens == pytest.approx(63 * 32 / 675)
    assert in_blocks == 63 // 22


def test_kv_config_reads_cache_config_info():
    page = 'vllm:cache_config_info{block_size="32",engine="0",num_gpu_blocks="400"} 1.0\n'
    assert kv_config(page) == KvConfig(num_blocks=400, block_size=32)


def test_markdown_table_has_every_column():
    row = Row(
        **{
            "setting": "pooling-0.75",
            "concurrency": 4,
            "num_prompts": 16,
            "completed": 16,
            "failed": 0,
            "duration_s": 2.0,
            "request_throughput": 8.0,
            "output_throughput": 512.0,
            **{f"{n}_p{p}_ms": 10.0 for n in ("ttft", "e2el") for p in (50, 90, 99)},
            "mean_prompt_tokens": 180.0,
            "visual_tokens_kept": None,
            "kv_usage_peak": 0.123,
            "kv_usage_mean": 0.05,
            "running_peak": 4,
            "waiting_peak": 0,
            "preemptions": 0,
            "metrics_samples": 10,
            "failed_scrapes": 0,
            "first_error": None,
            "command": "vllm bench serve ...",
        }
    )
    header, rule, line = markdown_table([row]).splitlines()
    assert header.count("|") == rule.count("|") == line.count("|") == len(COLUMNS) + 1
    assert "| pooling-0.75 | 4 | 16 | 0 | 8.00 |" in line
    assert "| 180.0 | - | 12.3 | 5.0 |" in line


# --- against real servers ---------------------------------------------------------------

SWEEP_PROMPTS = 4


@pytest.fixture(scope="module")
def sweep_out(server: Server, model_name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """none and pooling 0.75 at concurrency 1 and 2, 4 short requests each, through
    the URL + MODEL path of ``make loadtest`` (the tokenizer named as a remote user would)."""
    out = tmp_path_factory.mktemp("sweep")
    root = requests.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["root"]
    # fmt: off
    code = sweep.main([
        "--url", server.url, "--model", model_name, "--tokenizer", root,
        "--methods", "none,pooling", "--ratios", "0.75", "--concurrency", "1,2",
        "--num-prompts", str(SWEEP_PROMPTS), "--input-len", "16", "--output-len", "8",
        "--image-sizes", "336x336,640x480", "--out", str(out),
    ])
    # fmt: on
    assert code == 0
    return out


def test_sweep_writes_the_report(sweep_out: Path):
    for name in ("summary.md", "summary.csv", "summary.json"):
        assert (sweep_out / name).stat().st_size > 0, name
    for name in ("throughput_vs_p90_latency.png", "kv_usage_vs_concurrency.png"):
        data = (sweep_out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name
    rows = json.loads((sweep_out / "summary.json").read_text())
    with (sweep_out / "summary.csv").open() as handle:
        assert [r["setting"] for r in csv.DictReader(handle)] == [r["setting"] for r in rows]
    assert [(r["setting"], r["concurrency"]) for r in rows] == [
        ("none", 1),
        ("pooling-0.75", 1),
        ("none", 2),
        ("pooling-0.75", 2),
    ]
    table = (sweep_out / "summary.md").read_text()
    assert table.count("\n| none |") == 2 and table.count("\n| pooling-0.75 |") == 2


def test_sweep_numbers_are_consistent(sweep_out: Path):
    rows = json.loads((sweep_out / "summary.json").read_text())
    for r in rows:
        assert (r["completed"], r["failed"], r["first_error"]) == (SWEEP_PROMPTS, 0, None)
        assert r["request_throughput"] == pytest.approx(SWEEP_PROMPTS / r["duration_s"])
        assert r["output_throughput"] == pytest.approx(8 * SWEEP_PROMPTS / r["duration_s"])
        for name in ("ttft", "e2el"):
            assert 0 < r[f"{name}_p50_ms"] <= r[f"{name}_p90_ms"] <= r[f"{name}_p99_ms"]
        for p in (50, 90, 99):  # each request's first token comes before its end
            assert r[f"ttft_p{p}_ms"] <= r[f"e2el_p{p}_ms"]
        assert 0 <= r["kv_usage_mean"] <= r["kv_usage_peak"] <= 1
        assert r["running_peak"] <= r["concurrency"]
        assert r["preemptions"] == 0
        assert r["metrics_samples"] > 0 and r["failed_scrapes"] == 0
        assert r["visual_tokens_kept"] == KEPT[r["setting"]]
        assert r["command"].startswith("vllm bench serve --backend openai-chat")


def test_pruning_shortens_every_prompt_by_the_removed_tokens(sweep_out: Path):
    """Per request, as the server reported it: 576 - 144 = 432 tokens fewer at any image size."""
    for concurrency in (1, 2):
        lens = {}
        for setting in KEPT:
            raw = json.loads((sweep_out / "raw" / f"{setting}-c{concurrency}.json").read_text())
            assert len(raw["input_lens"]) == SWEEP_PROMPTS
            lens[setting] = set(raw["input_lens"])
        [unpruned] = lens["none"]
        assert lens["pooling-0.75"] == {unpruned - (VISUAL - KEPT["pooling-0.75"])}


def test_sweep_records_the_metrics_time_series(sweep_out: Path):
    """The sampler's own file (whether it caught the demo's few-millisecond requests
    running is luck: it polls every 50 ms)."""
    with (sweep_out / "raw" / "none-c2.metrics.csv").open() as handle:
        samples = list(csv.DictReader(handle))
    assert samples and list(samples[0]) == ["t", "kv_usage", "running", "waiting"]
    times = [float(s["t"]) for s in samples]
    assert times == sorted(times)
    assert all(0 <= float(s["kv_usage"]) <= 1 and int(s["running"]) <= 2 for s in samples)


def test_kv_capacity_pruning_fits_more_requests(server: Server, tmp_path: Path):
    """A server of its own (the session's tiny LLaVA) with 64 KV blocks of 32 tokens (63
    usable). With 92 output tokens a request holds 612 + 91 = 703 tokens unpruned (22
    blocks: 2 fit) and 180 + 91 = 271 at pooling 0.75 (9 blocks: 7 fit); both lengths sit
    well inside their last block, so requests a few tokens apart need the same blocks."""
    out = tmp_path / "kv"
    model = requests.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["root"]
    # fmt: off
    code = kv_capacity.main([
        "--serve-model", model, f"--serve-args={shlex.join(DEMO_ARGS)}",
        "--kv-blocks", "64", "--max-model-len", "1024", "--output-len", "92",
        "--methods", "none,pooling", "--ratios", "0.75", "--out", str(out),
    ])
    # fmt: on
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kv"] == {"num_blocks": 64, "block_size": 32}
    capacity = {c["setting"]: c for c in summary["capacities"]}
    assert capacity["none"]["prompt_tokens"] - capacity["pooling-0.75"]["prompt_tokens"] == 432
    assert (capacity["none"]["ideal_blocks"], capacity["pooling-0.75"]["ideal_blocks"]) == (2, 7)
    assert capacity["pooling-0.75"]["capacity"] > capacity["none"]["capacity"]
    assert capacity["none"]["capacity"] == 2
    assert capacity["pooling-0.75"]["capacity"] == 7
    # The search's evidence: the capacity fits, one more does not.
    probes = {(p["setting"], p["n"]): p for p in summary["probes"]}
    for setting, n, blocks in (("none", 2, 22), ("pooling-0.75", 7, 9)):
        fitting = probes[(setting, n)]
        assert fitting["fits"] and not probes[(setting, n + 1)]["fits"]
        assert fitting["scheduled_peak"] == n
        assert fitting["steps"] >= 92  # a prefill step, then a step per further token
        # the server's own KV usage at the end: n requests of `blocks` blocks in 63
        assert fitting["kv_usage_peak"] == pytest.approx(n * blocks / 63, abs=0.001)
    assert (out / "kv_capacity.png").read_bytes().startswith(b"\x89PNG")
    assert "| none | 576 | " in (out / "summary.md").read_text()


def test_every_method_has_an_arithmetic_floor():
    """``method_speed.py`` prints time / floor for every method: none is left without one."""
    from loadtests.method_floors import FLOORS, Shape, floor_seconds
    from vllm_prune.methods import method_names

    assert set(FLOORS) == set(method_names()) - {"none"}
    shape = Shape(n=576, d=4096, k=144, e=4)
    for name, work in FLOORS.items():
        assert floor_seconds(work(shape), 1e10, 1e11) > 0, name


def test_floors_count_the_bytes_and_flops_by_hand():
    from loadtests.method_floors import FLOORS, Shape, floor_seconds, vispruner_rounds

    s = Shape(n=4, d=8, k=2, e=4)
    # Two rows read and written; pooling reads every token and writes two.
    assert FLOORS["random"](s).bytes == 2 * 2 * 8 * 4 and FLOORS["random"](s).flops == 0
    assert FLOORS["pooling"](s).bytes == 4 * 8 * 4 + 2 * 8 * 4
    # DivPrune: the features, a 4 x 4 similarity written and read, 3 n per pick, the rows.
    divprune = FLOORS["divprune"](s)
    assert divprune.flops == 2 * 4 * 4 * 8
    assert divprune.bytes == 4 * 8 * 4 + 2 * 16 * 4 + 3 * 2 * 4 * 4 + 2 * 2 * 8 * 4
    # VisPruner on 10 tokens keeping 4 (2 important): candidates 8 -> 2, rounds of at most
    # 8: one round reads the 4 x 4 block of 8, then 2 remain.
    assert vispruner_rounds(Shape(n=10, d=8, k=4, e=4)).bytes == 4 * 4 * 4
    assert floor_seconds(divprune, 1.0, 1.0) == divprune.bytes + divprune.flops
