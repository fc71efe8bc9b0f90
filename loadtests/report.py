"""The sweep's report: one row per scenario as JSON, CSV and a Markdown table, and two plots.

Plots (matplotlib, headless): p90 latency (TTFT and end-to-end) against request
throughput, one line per setting with a point per concurrency level (the
curve an operator picks an operating point from); and peak and mean KV cache
usage against concurrency.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
LATENCY_PNG = "throughput_vs_p90_latency.png"
KV_PNG = "kv_usage_vs_concurrency.png"


@dataclass(frozen=True)
class Row:
    """One scenario: a setting at a concurrency level."""

    setting: str  # none, pooling-0.75, ...
    concurrency: int
    num_prompts: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    e2el_p50_ms: float
    e2el_p90_ms: float
    e2el_p99_ms: float
    mean_prompt_tokens: float  # usage.prompt_tokens per completed request
    visual_tokens_kept: float | None  # per image, from the vllm_prune counters (None: no plugin)
    kv_usage_peak: float
    kv_usage_mean: float
    running_peak: int
    waiting_peak: int
    preemptions: int
    metrics_samples: int  # /metrics scrapes behind the KV and running/waiting columns
    failed_scrapes: int
    first_error: str | None
    command: str  # the vllm bench serve command line of the scenario


COLUMNS = (
    ("setting", "setting", "{}"),
    ("concurrency", "concurrency", "{}"),
    ("completed", "completed", "{}"),
    ("failed", "errors", "{}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("output_throughput", "output tok/s", "{:.1f}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:.0f}"),
    ("ttft_p90_ms", "TTFT p90 (ms)", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 (ms)", "{:.0f}"),
    ("e2el_p50_ms", "e2e p50 (ms)", "{:.0f}"),
    ("e2el_p90_ms", "e2e p90 (ms)", "{:.0f}"),
    ("e2el_p99_ms", "e2e p99 (ms)", "{:.0f}"),
    ("mean_prompt_tokens", "prompt tokens", "{:.1f}"),
    ("visual_tokens_kept", "visual tokens kept", "{:.0f}"),
    ("kv_usage_peak", "KV peak %", "{:.1%}"),
    ("kv_usage_mean", "KV mean %", "{:.1%}"),
    ("waiting_peak", "waiting peak", "{}"),
    ("preemptions", "preemptions", "{}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(value).replace("%", "") if fmt.endswith("%}") else fmt.format(value)


def markdown_table(rows: list[Row]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [header, rule]
    for row in rows:
        cells = [_cell(getattr(row, name), fmt) for name, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[Row], out: Path, preamble: str = "") -> dict[str, Path]:
    """Write every file of the report into ``out``; returns them by kind."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / SUMMARY_JSON,
        "csv": out / SUMMARY_CSV,
        "md": out / SUMMARY_MD,
        "latency_png": out / LATENCY_PNG,
        "kv_png": out / KV_PNG,
    }
    paths["json"].write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    paths["md"].write_text(
        preamble
        + markdown_table(rows)
        + f"\n![throughput vs p90 latency]({LATENCY_PNG})\n\n![KV usage]({KV_PNG})\n"
    )
    plot_latency(rows, paths["latency_png"])
    plot_kv(rows, paths["kv_png"])
    return paths


def by_setting(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows grouped by setting (first-seen order), each sorted by concurrency."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.setting, []).append(row)
    return {name: sorted(group, key=lambda r: r.concurrency) for name, group in groups.items()}


def plot_latency(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for setting, group in by_setting(rows).items():
        x = [r.request_throughput for r in group]
        for ax, key in zip(axes, ("ttft_p90_ms", "e2el_p90_ms"), strict=True):
            ax.plot(x, [getattr(r, key) for r in group], marker="o", label=setting)
            for r in group:
                ax.annotate(
                    f"c={r.concurrency}",
                    (r.request_throughput, getattr(r, key)),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    for ax, title in zip(axes, ("p90 time to first token", "p90 end-to-end latency"), strict=True):
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_kv(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for setting, group in by_setting(rows).items():
        x = [r.concurrency for r in group]
        (line,) = ax.plot(
            x, [100 * r.kv_usage_peak for r in group], marker="o", label=f"{setting} peak"
        )
        ax.plot(
            x,
            [100 * r.kv_usage_mean for r in group],
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{setting} mean",
        )
    levels = sorted({r.concurrency for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.minorticks_off()
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("KV cache usage (%)")
    ax.set_ylim(0, 105)
    ax.set_title("KV cache usage during the run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
