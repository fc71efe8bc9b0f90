"""A real Prometheus (Debian's server binary) scraping the real pruning server.

It runs the shipped deploy/prometheus/prometheus.yml (scrape interval cut to 1 s,
target pointed at the test server) with the shipped alert rules; known requests
go to the server, and PromQL over Prometheus's HTTP API must return the prune
metrics they produce. Every dashboard query and the prometheus-adapter query of
the autoscaler must return data, and every metric name they use must exist.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtests.probe import image_messages

from .conftest import Server, free_port, stop
from .test_deploy import (
    ALERTS,
    DEPLOY,
    adapter_query,
    dashboard_exprs,
    load_yaml,
    referenced_metrics,
    tool,
)

N = 576  # the demo LLaVA's visual tokens per image
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 32 * 4  # K and V x layers x KV heads x head dim x fp32
POD = {"namespace": "default", "pod": "vllm-prune-0"}  # what the Prometheus Operator adds


def query(url: str, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr} if at is None else {"query": expr, "time": at}
    response = requests.get(f"{url}/api/v1/query", params=params, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def by_method(url: str, metric: str, at: float | None = None) -> dict[str, float]:
    result = query(url, f"sum by (method) ({metric})", at)
    return {sample["metric"]["method"]: float(sample["value"][1]) for sample in result}


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("prometheus")
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    [job] = config["scrape_configs"]
    # The operator's namespace and pod labels, which the adapter rule selects on.
    job["static_configs"] = [{"targets": [urlparse(server.url).netloc], "labels": POD}]
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))

    url = f"http://127.0.0.1:{free_port()}"
    log = root / "prometheus.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={urlparse(url).netloc}",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def scraped() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{log.read_text()[-4000:]}")
            try:
                return bool(query(url, 'up{job="vllm-prune"} == 1'))
            except requests.RequestException:
                return False

        wait_for(scraped, "Prometheus's first successful scrape of the server")
        yield url
    finally:
        stop(process, timeout=20)


def _ask(server: Server, model: str, extra: dict, seed: int, stream: bool = False) -> None:
    response = server.client.chat.completions.create(
        model=model,
        messages=image_messages(seed=seed),
        max_tokens=2,
        temperature=0.0,
        stream=stream,
        extra_body=extra,
    )
    if stream:
        list(response)


COUNTERS = {
    "requests": "vllm_prune_requests_total",
    "before": "vllm_prune_visual_tokens_before_total",
    "after": "vllm_prune_visual_tokens_after_total",
    "kv_saved": "vllm_prune_kv_cache_bytes_saved_total",
    "e2e": "vllm_prune_e2e_request_latency_seconds_count",
    "ttft": "vllm_prune_time_to_first_token_seconds_count",
}
# What one round of _send_one_of_each adds, by counter and method.
EXPECTED = {
    "requests": {"pooling": 2, "none": 1, "random": 1},
    "before": {"pooling": 2 * N, "none": N, "random": N},
    "after": {"pooling": 2 * 144, "none": N, "random": 64},
    "kv_saved": {
        "pooling": 2 * (N - 144) * KV_BYTES_PER_TOKEN,
        "none": 0,
        "random": (N - 64) * KV_BYTES_PER_TOKEN,
    },
    "e2e": {"pooling": 2, "none": 1, "random": 1},
    "ttft": {"random": 1},  # streaming requests only
}


def _send_one_of_each(server: Server, model: str, seed: int) -> None:
    """2 x the server's default (pooling at 0.75), none, and random at 0.889 streamed."""
    _ask(server, model, {}, seed=seed)
    _ask(server, model, {}, seed=seed + 1)
    _ask(server, model, {"prune": "none"}, seed=seed + 2)
    _ask(server, model, {"prune": "random", "prune_ratio": 0.889}, seed=seed + 3, stream=True)


@pytest.fixture(scope="module")
def sent(server: Server, model_name: str, prometheus: str) -> tuple[float, dict]:
    """Known requests; returns when they were sent and Prometheus's counters before them."""
    # A warm-up round first: Prometheus's rate() and increase() ignore the first
    # value of a series, so every label set must exist before the measured round.
    _send_one_of_each(server, model_name, seed=901)
    wait_for(
        lambda: by_method(prometheus, COUNTERS["ttft"]).get("random"),
        "a scrape with every method's series",
    )
    # Nothing else talks to the server now: the last scrape before t0 holds the
    # counters as they are before the measured round.
    time.sleep(1.5)  # one more scrape interval
    t0 = time.time()
    start = {key: by_method(prometheus, name, at=t0) for key, name in COUNTERS.items()}
    _send_one_of_each(server, model_name, seed=911)
    return t0, start


def test_prometheus_reports_the_prune_metrics_of_known_requests(prometheus: str, sent):
    t0, start = sent

    def deltas() -> dict[str, dict[str, float]]:
        now = {key: by_method(prometheus, name) for key, name in COUNTERS.items()}
        return {
            key: {m: now[key].get(m, 0) - start[key].get(m, 0) for m in EXPECTED[key]}
            for key in COUNTERS
        }

    # Wait for a scrape after the last request, then compare exactly.
    wait_for(lambda: deltas() == EXPECTED, "a scrape with the requests' metrics")
    assert deltas() == EXPECTED

    # The dashboard's "kept" share, from Prometheus alone: after / before since t0.
    window = f"{int(time.time() - t0) + 2}s"
    kept = query(
        prometheus,
        f'sum(increase(vllm_prune_visual_tokens_after_total{{method="pooling"}}[{window}]))'
        f' / sum(increase(vllm_prune_visual_tokens_before_total{{method="pooling"}}[{window}]))',
    )
    assert float(kept[0]["value"][1]) == pytest.approx(0.25)


def test_dashboard_and_autoscaler_queries_return_data(prometheus: str, sent):
    # After two rounds of requests every series the dashboard shows has several samples.
    for expr in dashboard_exprs():
        assert query(prometheus, expr), f"no data for the dashboard query {expr}"

    # prometheus-adapter: its seriesQuery finds one series per pod, and the
    # metricsQuery the HPA reads is the queue length of that pod (idle: 0).
    [rule] = load_yaml(DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
    series = requests.get(
        f"{prometheus}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10
    ).json()["data"]
    assert [{k: s[k] for k in POD} for s in series] == [POD]
    [sample] = query(prometheus, adapter_query())
    assert sample["metric"] == {"pod": POD["pod"]} and float(sample["value"][1]) == 0


def test_alert_rules_evaluate_cleanly(prometheus: str):
    def rules() -> list[dict]:
        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    never = "0001-01-01T00:00:00Z"  # Go's zero time: not evaluated yet
    wait_for(lambda: all(r["lastEvaluation"] != never for r in rules()), "each rule evaluated")
    loaded = {r["name"]: (r["health"], r.get("lastError", "")) for r in rules()}
    names = {r["alert"] for g in load_yaml(ALERTS)["groups"] for r in g["rules"]}
    # Evaluated against real series without an error (a bad function or a
    # many-to-many match only shows up here, on data).
    assert loaded == {name: ("ok", "") for name in names}


def test_every_referenced_metric_is_exported(server: Server, sent):
    # The dashboard, the alerts and the adapter read these names; a rename in
    # vllm_prune/metrics.py or in vLLM would leave them empty without an error.
    exported = {
        sample.name
        for family in text_string_to_metric_families(server.metrics_text())
        for sample in family.samples
    }
    missing = referenced_metrics() - exported
    assert not missing, f"not on /metrics: {sorted(missing)}"
    assert {"vllm:num_requests_waiting", "vllm_prune_requests_total"} <= referenced_metrics()
