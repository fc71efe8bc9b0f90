"""The Grafana dashboard drawn as a PNG from a real Prometheus, for machines without Grafana.

    python -m loadtests.dashboard_figure                  # demo server + Prometheus, 120 s of load
    python -m loadtests.dashboard_figure --url http://127.0.0.1:8000 --seconds 300

The docs show what ``deploy/grafana/dashboards/vllm-prune.json`` looks like; a
hand-made mock-up would drift from the JSON, and no Grafana runs here. So this
script runs the real chain but the browser: a local ``vllm-prune serve`` of the
demo model with a small fixed KV cache (``loadtests/local_server.py``; ``--url``:
a running server instead), Debian's ``prometheus`` scraping its ``/metrics``
every second, and a load of concurrent image chat requests that touches every
panel: ``none``, ``pooling`` 0.75, ``random`` 0.889 and ``divprune`` 0.75, half of
them streamed (the time-to-first-token histogram counts streams only), with a
concurrency that rises from 1 to ``--peak`` and falls back, so that the KV
cache fills and requests wait. Then every panel's PromQL, with Grafana's
variables filled in, goes to Prometheus's HTTP API and matplotlib draws the
panels where their ``gridPos`` puts them. A query without data is an error (exit
status 1), so the picture never shows an empty panel.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import requests
from openai import DefaultHttpxClient, OpenAI

from loadtests.local_server import (
    DEFAULT_BLOCK_SIZE,
    free_port,
    kv_config,
    local_server,
    serve_args,
)
from loadtests.probe import image_messages
from loadtests.scrape import scrape
from vllm_prune.eval.client import Setting

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vllm-prune.json"
DEFAULT_OUT = Path("docs/figures/grafana-dashboard.png")
DEFAULT_LOGS = Path("loadtests/results/dashboard_figure")
SETTINGS = [
    Setting("none"),
    Setting("pooling", 0.75),
    Setting("random", 0.889),
    Setting("divprune", 0.75),
]
SCRAPE_S = 1
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval),
# the scrape interval being the data source's setting (15 s unless set). 4 x our 1 s
# scrape would be 4 s: a rate over 4 samples, jagged when requests take about a second.
# 15 s, Grafana's own value at a 3.75 s scrape interval, keeps the curves readable.
RATE_INTERVAL = "15s"
TAIL_S = 5  # after the load: the gauges' fall back to idle, and the last counters, scraped
TITLE = (
    "vllm-prune dashboard (deploy/grafana/dashboards/vllm-prune.json), "
    "drawn from a real Prometheus by loadtests/dashboard_figure.py"
)


# --- Prometheus ---------------------------------------------------------------------------


@contextmanager
def prometheus(target_url: str, log: Path) -> Iterator[str]:
    """Debian's Prometheus scraping ``target_url``/metrics every second, in a temporary
    folder (config and TSDB) on a free loopback port, until the block ends; its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit(
            "prometheus is not installed: `make prometheus-tools` installs Debian's package"
        )
    target = urlparse(target_url)
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {
                "job_name": "vllm-prune",
                "scheme": target.scheme or "http",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target.netloc]}],
            }
        ],
    }
    url = f"http://127.0.0.1:{free_port()}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dashboard-prometheus-") as root:
        config_file = Path(root) / "prometheus.yml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={Path(root) / 'data'}",
                    f"--web.listen-address={urlparse(url).netloc}",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_scraped(process, url, log)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_scraped(process: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> None:
    """Until Prometheus has scraped the server once (``up == 1``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited ({log}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException, RuntimeError):
            if instant(url, 'up{job="vllm-prune"} == 1'):
                return
        time.sleep(0.5)
    raise RuntimeError(f"prometheus did not scrape the server within {timeout:.0f}s ({log})")


def _api(url: str, endpoint: str, params: dict) -> list[dict]:
    response = requests.get(f"{url}/api/v1/{endpoint}", params=params, timeout=60)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"{endpoint} {params['query']!r}: {body.get('error', body)}")
    return body["data"]["result"]


def instant(url: str, expr: str, at: float | None = None) -> list[dict]:
    return _api(url, "query", {"query": expr} | ({} if at is None else {"time": at}))


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    return _api(url, "query_range", {"query": expr, "start": start, "end": end, "step": step})


# --- load ---------------------------------------------------------------------------------


@dataclass
class LoadReport:
    sent: int = 0
    streamed: int = 0
    failed: int = 0
    first_error: str = ""


class Load:
    """``peak`` threads, of which ``concurrency(t)`` send requests back to back: a triangle
    from 1 up to ``peak`` at half time and down to 1, so KV usage and the queue rise and fall.

    Request k carries ``SETTINGS[k % 4]`` and is streamed when ``(k // 4) % 2``: every
    method gets streamed and unstreamed requests. Every image is a fresh one (a seed of
    its own, offset by the clock so that a rerun against ``--url`` sends new ones too),
    so no request is served from vLLM's multimodal cache.
    """

    def __init__(self, client, model: str, seconds: float, peak: int, max_tokens: int):
        self.client, self.model = client, model
        self.seconds, self.peak, self.max_tokens = seconds, peak, max_tokens
        self.report = LoadReport()
        self._numbers = itertools.count(4 * len(SETTINGS))  # the warm-up sends 0 .. 15
        self._seeds = time.time_ns() % 2**40
        self._lock = threading.Lock()
        self._start = 0.0

    def concurrency(self, elapsed: float) -> int:
        rise = 1 - abs(2 * elapsed / self.seconds - 1)
        return 1 + round((self.peak - 1) * max(0.0, rise))

    def ask(self, k: int, max_tokens: int) -> None:
        """One image request of setting ``k % 4``; ``ignore_eos`` so that each one holds
        its KV blocks for ``max_tokens`` steps, whatever the demo model answers."""
        setting, stream = SETTINGS[k % len(SETTINGS)], (k // len(SETTINGS)) % 2 == 1
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=image_messages(seed=self._seeds + k),
                max_tokens=max_tokens,
                temperature=0.0,
                stream=stream,
                extra_body={**setting.extra_body(), "ignore_eos": True},
            )
            if stream:
                for _ in response:
                    pass
        except Exception as error:  # counted and reported: the run then fails
            with self._lock:
                self.report.failed += 1
                self.report.first_error = self.report.first_error or repr(error)
        with self._lock:
            self.report.sent += 1
            self.report.streamed += stream

    def warm_up(self) -> None:
        """Each setting once streamed, once not, twice, a few scrapes apart: every series
        the dashboard reads exists before the load (rate() and increase() ignore a series'
        first sample), and has risen within the first rate window of the load (else the
        ratio panels start with 0 / 0 for a method until its next request is scraped)."""
        for round_ in range(2):
            for k in range(2 * len(SETTINGS)):
                self.ask(round_ * 2 * len(SETTINGS) + k, max_tokens=4)
            time.sleep(3 * SCRAPE_S)
        if self.report.failed:
            raise RuntimeError(f"a warm-up request failed: {self.report.first_error}")
        self.report = LoadReport()

    def run(self) -> LoadReport:
        self._start = time.monotonic()
        threads = [threading.Thread(target=self._worker, args=(i,)) for i in range(self.peak)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.report

    def _worker(self, index: int) -> None:
        while (elapsed := time.monotonic() - self._start) < self.seconds:
            if index >= self.concurrency(elapsed):
                time.sleep(0.1)
                continue
            with self._lock:
                k = next(self._numbers)
            self.ask(k, self.max_tokens)


# --- the dashboard's queries --------------------------------------------------------------


@dataclass
class Series:
    name: str
    ref: str  # the target's refId (A, B): its line style
    method: str | None
    values: list[float]  # one per step, NaN where the series has no sample


@dataclass
class PanelData:
    panel: dict
    series: list[Series]


def expand(expr: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        expr = expr.replace(name, value)
    if "$" in expr:
        raise RuntimeError(f"a Grafana variable this script does not fill in: {expr}")
    return expr


def legend(target: dict, labels: dict[str, str]) -> str:
    """Grafana's legendFormat ({{label}} replaced), else the label set as PromQL writes it."""
    if target.get("legendFormat"):
        return re.sub(
            r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), target["legendFormat"]
        )
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels.get('__name__', '')}{{{inner}}}"


def _legend_order(series: Series) -> tuple[int, str]:
    """The methods in the order of SETTINGS (none first), then by name."""
    methods = [s.method for s in SETTINGS]
    rank = methods.index(series.method) if series.method in methods else len(methods)
    return rank, series.name


def fetch_panels(
    prom: str, dashboard: dict, start: float, end: float, variables: dict[str, str]
) -> list[PanelData]:
    """Every panel's targets: stat panels at ``end`` (``/api/v1/query``), timeseries from
    ``start`` to ``end`` every second (``/api/v1/query_range``). A target without a single
    finite value is an error naming the panel and its query."""
    steps = int(end - start) + 1
    grid = [start + i for i in range(steps)]
    panels, empty = [], []
    for panel in dashboard["panels"]:
        series: list[Series] = []
        for target in panel["targets"]:
            expr = expand(target["expr"], variables)
            if panel["type"] == "stat":
                found = [
                    Series(
                        legend(target, s["metric"]),
                        target["refId"],
                        s["metric"].get("method"),
                        [float(s["value"][1])],
                    )
                    for s in instant(prom, expr, at=end)
                ]
            else:
                found = []
                for s in query_range(prom, expr, start, start + steps - 1, 1):
                    at = {round(float(t)): float(v) for t, v in s["values"]}
                    values = [at.get(round(t), math.nan) for t in grid]
                    name = legend(target, s["metric"])
                    found.append(Series(name, target["refId"], s["metric"].get("method"), values))
            if not any(math.isfinite(v) for s in found for v in s.values):
                empty.append(f"{panel['title']!r} ({target['refId']}): {expr}")
            series += sorted(found, key=_legend_order)
        panels.append(PanelData(panel, series))
    if empty:
        raise RuntimeError("no data for the dashboard queries:\n  " + "\n  ".join(empty))
    return panels


# --- drawing ------------------------------------------------------------------------------

BACKGROUND, PANEL, TEXT, DIM, GRIDLINE = "#111217", "#181b1f", "#ccccdc", "#8e8e9e", "#2c3235"
STAT_COLOR = "#73bf69"  # Grafana's green, the base threshold of a stat panel
METHOD_COLORS = {  # one colour per method across panels (Grafana's classic palette)
    "none": "#f2cc0c",
    "pooling": "#73bf69",
    "random": "#5794f2",
    "divprune": "#ff780a",
}
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#f2495c", "#b877d9", "#8ab8ff"]
STYLES = {"A": "-", "B": "--"}  # first target solid (before, p50), second dashed (after, p95)


def _digits(value: float) -> str:
    """3 significant digits, never an exponent (1020, 94.7, 0.25, 0)."""
    if value == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:.0f}"


def _scaled(value: float, base: float, units: list[str]) -> tuple[str, str]:
    index = 0
    while abs(value) >= base and index < len(units) - 1:
        value, index = value / base, index + 1
    return _digits(value), units[index]


def fmt(value: float, unit: str) -> str:
    """A value in a Grafana unit, about as Grafana shows it (3 significant digits)."""
    if not math.isfinite(value):
        return "-"
    if unit == "percentunit":
        return f"{_digits(100 * value)}%"
    if unit in ("bytes", "binBps"):
        number, prefix = _scaled(value, 1024, ["B", "KiB", "MiB", "GiB", "TiB"])
        return f"{number} {prefix}" + ("/s" if unit == "binBps" else "")
    if unit == "s":
        return f"{_digits(1000 * value)} ms" if abs(value) < 1 else f"{_digits(value)} s"
    if unit == "reqps":
        return f"{_digits(value)} req/s"
    if unit.startswith("suffix:"):
        return f"{_digits(value)}{unit.removeprefix('suffix:')}"
    number, suffix = _scaled(value, 1000, ["", " K", " Mil", " Bil"])
    return number + suffix


def _same(a: list[float], b: list[float]) -> bool:
    """Whether two series have the same values wherever both have one (and have one)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    return bool(pairs) and all(abs(x - y) <= 1e-3 * max(abs(x), abs(y)) for x, y in pairs)


class Layout:
    """Inches from the figure's top left to matplotlib's figure fractions."""

    def __init__(self, width: float, height: float):
        self.width, self.height = width, height

    def rect(self, left: float, top: float, width: float, height: float) -> list[float]:
        return [
            left / self.width,
            1 - (top + height) / self.height,
            width / self.width,
            height / self.height,
        ]

    def point(self, left: float, top: float) -> tuple[float, float]:
        return left / self.width, 1 - top / self.height


def draw(panels: list[PanelData], out: Path, subtitle: str, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    width, height, dpi = 16.0, 20.0, 90
    header, margin, gap = 0.95, 0.15, 0.08
    rows = max(p.panel["gridPos"]["y"] + p.panel["gridPos"]["h"] for p in panels)
    column, row = (width - 2 * margin) / 24, (height - header - margin) / rows
    layout = Layout(width, height)
    fig = plt.figure(figsize=(width, height), dpi=dpi, facecolor=BACKGROUND)
    fig.text(*layout.point(margin, 0.12), TITLE, color=TEXT, fontsize=14, va="top")
    fig.text(
        *layout.point(margin, 0.42), subtitle, color=DIM, fontsize=9.5, va="top", parse_math=False
    )
    line_h = 0.19  # a legend row, inches

    for data in panels:
        panel, pos = data.panel, data.panel["gridPos"]
        left, top = margin + pos["x"] * column + gap / 2, header + pos["y"] * row + gap / 2
        w, h = pos["w"] * column - gap, pos["h"] * row - gap
        card = fig.add_axes(layout.rect(left, top, w, h))
        card.set_facecolor(PANEL)
        card.set_xticks([])
        card.set_yticks([])
        for spine in card.spines.values():
            spine.set_color(GRIDLINE)
        fig.text(
            *layout.point(left + 0.12, top + 0.1),
            panel["title"],
            color=TEXT,
            fontsize=11,
            fontweight="bold",
            va="top",
        )
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")

        if panel["type"] == "stat":
            values = data.series
            for i, s in enumerate(values):
                x = left + w * (i + 0.5) / len(values)
                fig.text(
                    *layout.point(x, top + h * 0.58),
                    fmt(s.values[0], unit),
                    color=STAT_COLOR,
                    fontsize=34,
                    fontweight="bold",
                    ha="center",
                    va="center",
                )
                if len(values) > 1:
                    fig.text(*layout.point(x, top + h - 0.2), s.name, color=DIM, ha="center")
            continue

        # timeseries: the plot, then Grafana's table legend (name, mean, max) below it
        ncol = 2 if len(data.series) > 4 or pos["w"] >= 24 else 1
        legend_rows = math.ceil(len(data.series) / ncol) + 1
        legend_h = legend_rows * line_h + 0.05
        axes_left, axes_top = left + 0.85, top + 0.38
        axes_h = h - 0.38 - 0.3 - legend_h
        ax = fig.add_axes(layout.rect(axes_left, axes_top, w - 0.85 - 0.2, axes_h))
        ax.set_facecolor(PANEL)
        elapsed = list(range(len(data.series[0].values)))
        colors = itertools.cycle(PALETTE)
        entries = []
        for i, s in enumerate(data.series):
            color = METHOD_COLORS.get(s.method or "") or next(colors)
            style = STYLES.get(s.ref, ":")
            # A series that a later one covers exactly (pooling and divprune both keep 25%)
            # is drawn wider underneath, so that both colours show.
            covered = sum(_same(s.values, later.values) for later in data.series[i + 1 :])
            ax.plot(elapsed, s.values, color=color, linestyle=style, linewidth=1.4 + 1.4 * covered)
            finite = [v for v in s.values if math.isfinite(v)]
            mean = sum(finite) / len(finite) if finite else math.nan
            entries.append((s.name, color, style, mean, max(finite, default=math.nan)))
        low, high = defaults.get("min"), defaults.get("max")
        bottom, top_y = ax.get_ylim()
        bottom = low if low is not None else min(bottom, 0)
        top_y = high if high is not None else top_y
        pad = 0.03 * (top_y - bottom)  # lines on a hard min or max stay visible
        ax.set_ylim(bottom - (pad if low is not None else 0), top_y + pad)
        ax.set_xlim(0, max(elapsed[-1], 1))
        ax.xaxis.set_major_locator(MultipleLocator(30 if seconds > 90 else 10))
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{int(v) // 60}:{int(v) % 60:02d}")
        )
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, unit=unit: fmt(v, unit)))
        ax.tick_params(colors=DIM, labelsize=8.5, length=0)
        ax.grid(color=GRIDLINE, linewidth=0.7)
        for spine in ax.spines.values():
            spine.set_visible(False)

        legend_top = axes_top + axes_h + 0.3
        col_w = (w - 0.3) / ncol
        for c in range(ncol):
            x0 = left + 0.15 + c * col_w
            for label, x in (("Mean", x0 + col_w - 1.05), ("Max", x0 + col_w - 0.15)):
                fig.text(
                    *layout.point(x, legend_top),
                    label,
                    color=DIM,
                    fontsize=8.5,
                    ha="right",
                    va="top",
                )
        for i, (name, color, style, mean, peak) in enumerate(entries):
            c, r = divmod(i, legend_rows - 1)
            x0, y = left + 0.15 + c * col_w, legend_top + (r + 1) * line_h
            (x1, y1), (x2, _) = layout.point(x0, y + 0.07), layout.point(x0 + 0.3, y + 0.07)
            fig.add_artist(
                Line2D(
                    [x1, x2],
                    [y1, y1],
                    color=color,
                    linestyle=style,
                    linewidth=2,
                )
            )
            fig.text(*layout.point(x0 + 0.4, y), name, color=TEXT, fontsize=8.5, va="top")
            for value, x in ((mean, x0 + col_w - 1.05), (peak, x0 + col_w - 0.15)):
                fig.text(
                    *layout.point(x, y),
                    fmt(value, unit),
                    color=TEXT,
                    fontsize=8.5,
                    ha="right",
                    va="top",
                )

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=BACKGROUND)
    plt.close(fig)
    from PIL import Image

    # 256 colours: a third of the full-colour PNG's bytes, no visible loss on flat panels.
    buffer.seek(0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(out, optimize=True)


# --- the run ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.dashboard_figure", description=__doc__.splitlines()[0]
    )
    p.add_argument("--url", help="a running server (default: start the demo model locally)")
    p.add_argument("--model", help="served model name (default: the server's first model)")
    p.add_argument("--api-key", default="unused", help="the server's API key, if it has one")
    p.add_argument("--seconds", type=float, default=120, help="load duration (default 120)")
    p.add_argument("--peak", type=int, default=24, help="concurrency at half time (default 24)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer (default 128)")
    local = p.add_argument_group("local server (without --url)")
    local.add_argument("--kv-blocks", type=int, default=128, help="KV blocks (default 128)")
    local.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    local.add_argument("--max-num-seqs", type=int, default=64)
    local.add_argument("--serve-args", type=shlex.split, default=[], help="more vllm serve options")
    p.add_argument("--dashboard", type=Path, default=DASHBOARD, help="the Grafana JSON")
    p.add_argument("--logs", type=Path, default=DEFAULT_LOGS, help=f"default {DEFAULT_LOGS}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    return p


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dashboard = json.loads(args.dashboard.read_text())
    # A SIGTERM unwinds through the `finally`s too: no server or Prometheus outlives us.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    began = time.monotonic()
    if args.url:
        target = nullcontext(None)
    else:
        print(f"starting the demo server (log: {args.logs / 'server.log'})", flush=True)
        options = serve_args(args.kv_blocks, args.block_size, args.max_num_seqs)
        target = local_server(args.logs / "server.log", None, [*args.serve_args, *options])
    with target as server:
        url = args.url.rstrip("/").removesuffix("/v1") if args.url else server.url
        # No retries: a failed request fails the run. Idle connections are dropped after
        # 2 s, before uvicorn's 5 s keep-alive closes them under a request reusing one
        # (the workers idle while the concurrency is low).
        limits = httpx.Limits(max_keepalive_connections=args.peak, keepalive_expiry=2)
        client = OpenAI(
            base_url=f"{url}/v1",
            api_key=args.api_key,
            max_retries=0,
            http_client=DefaultHttpxClient(limits=limits),
        )
        model = args.model or client.models.list().data[0].id
        try:
            kv = kv_config(scrape(f"{url}/metrics"))
            kv_text = f"KV cache {kv.num_blocks} blocks x {kv.block_size} tokens"
        except (KeyError, OSError) as error:
            kv_text = f"KV cache unknown ({error})"
        with prometheus(url, args.logs / "prometheus.log") as prom:
            print(f"prometheus {prom} scrapes {url}/metrics every {SCRAPE_S}s", flush=True)
            load = Load(client, model, args.seconds, args.peak, args.max_tokens)
            load.warm_up()
            start = math.floor(time.time())
            print(f"load: {args.seconds:g}s, concurrency 1 -> {args.peak} -> 1", flush=True)
            report = load.run()
            time.sleep(TAIL_S)
            end = math.ceil(time.time())
            print(
                f"sent {report.sent} requests ({report.streamed} streamed), {report.failed} failed",
                flush=True,
            )
            if report.failed:
                print(f"first error: {report.first_error}", file=sys.stderr)
                return 1
            variables = {"$__range": f"{end - start}s", "$__rate_interval": RATE_INTERVAL}
            try:
                panels = fetch_panels(prom, dashboard, start, end, variables)
            except RuntimeError as error:
                print(error, file=sys.stderr)
                return 1
    subtitle = (
        f"Load: {report.sent} image requests to {model} in {args.seconds:g} s "
        f"({', '.join(s.name for s in SETTINGS)}; half of them streamed), concurrency "
        f"1 -> {args.peak} -> 1, {args.max_tokens} tokens per answer; {kv_text}.\n"
        f"Prometheus scraped /metrics every {SCRAPE_S} s; $__range = {end - start}s, "
        f"$__rate_interval = {RATE_INTERVAL}; stat panels at the end of the range. "
        "x axes: minutes:seconds since the load began."
    )
    draw(panels, args.out, subtitle, args.seconds)
    for data in panels:
        if data.panel["type"] == "stat":
            unit = data.panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
            print(f"  {data.panel['title']}: {fmt(data.series[0].values[0], unit)}")
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB) in {time.monotonic() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
