"""The summary of an output folder, in the paper's format (Table 1): one row per setting,
one column per benchmark (its headline metric), and the average of each setting's
scores as % of the unpruned (``none``) scores.

``OUT/results.json`` holds every scored (benchmark, setting) of every run into OUT; a
run replaces the entries it scored and keeps the others, so benchmarks run one at a
time still end up in one table. From it are written:

  OUT/summary.md   the table (scores of fractional metrics x 100), the mean prompt tokens
                   per request (the pruning the server really did), every metric of each
                   benchmark that has more than one, notes on refusals
  OUT/summary.csv  the same table with unrounded metric values
  OUT/scores.csv   every metric of every setting (benchmark, setting, metric, value)
  OUT/summary.png  score vs visual tokens retained, one line per method, one panel per
                   benchmark (and one for the average when there are several)
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_prune.eval.benchmarks import get_benchmark
from vllm_prune.eval.client import Setting
from vllm_prune.eval.runner import OK, REFUSED, SettingResult

RESULTS, SUMMARY_MD, SUMMARY_CSV, SCORES_CSV, SUMMARY_PNG = (
    "results.json",
    "summary.md",
    "summary.csv",
    "scores.csv",
    "summary.png",
)
NONE = "none"


@dataclass
class Results:
    """Every scored (benchmark, setting) of an output folder, in first-run order."""

    by_benchmark: dict[str, dict[str, SettingResult]]
    model: str | None = None

    @classmethod
    def load(cls, out: Path) -> Results:
        path = out / RESULTS
        if not path.exists():
            return cls({})
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            {
                name: {
                    setting: SettingResult.from_json(result)
                    for setting, result in entry["settings"].items()
                }
                for name, entry in data["benchmarks"].items()
            },
            data.get("model"),
        )

    def update(self, results: Iterable[SettingResult]) -> None:
        for result in results:
            self.by_benchmark.setdefault(result.benchmark, {})[result.setting.name] = result

    def save(self, out: Path) -> Path:
        document = {
            "model": self.model,
            "benchmarks": {
                name: {
                    "main_metric": get_benchmark(name).main_metric,
                    "settings": {key: r.to_json() for key, r in settings.items()},
                }
                for name, settings in self.by_benchmark.items()
            },
        }
        path = out / RESULTS
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # a crash never leaves half a results file
        return path

    @property
    def benchmarks(self) -> list[str]:
        return list(self.by_benchmark)

    def settings(self) -> list[Setting]:
        """``none`` first, then by ratio (paper: 75% then 88.9%), methods in first-seen order."""
        seen: dict[str, Setting] = {}
        for settings in self.by_benchmark.values():
            for result in settings.values():
                seen.setdefault(result.setting.name, result.setting)
        methods = list(dict.fromkeys(s.method for s in seen.values()))
        return sorted(
            seen.values(),
            key=lambda s: (s.ratio is not None, s.ratio or 0.0, methods.index(s.method)),
        )

    def get(self, benchmark: str, setting: Setting) -> SettingResult | None:
        return self.by_benchmark.get(benchmark, {}).get(setting.name)

    def main_score(self, benchmark: str, setting: Setting) -> float | None:
        result = self.get(benchmark, setting)
        if result is None or result.status != OK:
            return None
        return result.scores.get(get_benchmark(benchmark).main_metric)

    def relative(self, setting: Setting) -> tuple[float | None, int]:
        """Mean over benchmarks of score / none's score, in %; and how many it covers."""
        if setting.method == NONE:
            covered = [b for b in self.benchmarks if self.main_score(b, setting) is not None]
            return (100.0 if covered else None), len(covered)
        ratios = []
        for benchmark in self.benchmarks:
            score = self.main_score(benchmark, setting)
            base = self.main_score(benchmark, Setting(NONE))
            if score is not None and base:  # a zero baseline has no ratio
                ratios.append(100.0 * score / base)
        return (sum(ratios) / len(ratios) if ratios else None), len(ratios)


def _fractional(results: Results, benchmark: str) -> bool:
    """Metrics in [0, 1] are shown x 100, as the paper does (MME's points are not)."""
    values = [results.main_score(benchmark, s) for s in results.settings()]
    return all(v is None or abs(v) <= 1.0 for v in values)


def _cell(results: Results, benchmark: str, setting: Setting, notes: list[str]) -> str:
    result = results.get(benchmark, setting)
    if result is None:
        return "-"
    if result.status == REFUSED:
        notes.append(f"{setting.name} on {benchmark}: refused by the server: {result.message}")
        return f"refused [{len(notes)}]"
    value = results.main_score(benchmark, setting)
    if value is None:
        return "-"
    text = f"{value * 100:.1f}" if _fractional(results, benchmark) else f"{value:.1f}"
    if result.message:  # refused samples, or no pruning seen
        notes.append(f"{setting.name} on {benchmark}: {result.message}")
        text += f" [{len(notes)}]"
    return text


def _relative_text(results: Results, setting: Setting) -> str:
    value, covered = results.relative(setting)
    if value is None:
        return "n/a"
    text = f"{value:.1f}%"
    if setting.method != NONE:
        text += f" ({value - 100:+.1f}%)"
    if covered < len(results.benchmarks):
        text += f" [{covered} of {len(results.benchmarks)}]"
    return text


def _ratio_text(setting: Setting) -> str:
    return "-" if setting.ratio is None else f"{setting.ratio:g}"


def markdown(results: Results) -> str:
    benchmarks = results.benchmarks
    notes: list[str] = []
    header = [
        "method",
        "ratio",
        "retained",
        *(f"{b} ({get_benchmark(b).main_metric})" for b in benchmarks),
        "Avg. (% of none)",
    ]
    rows = [
        [
            s.method,
            _ratio_text(s),
            f"{s.retained_percent:.1f}%",
            *(_cell(results, b, s, notes) for b in benchmarks),
            _relative_text(results, s),
        ]
        for s in results.settings()
    ]
    title = "# Accuracy by pruning setting" + (f" ({results.model})" if results.model else "")
    lines = [title, "", *_table(header, rows), ""]
    lines.append(
        "Each benchmark's headline metric; metrics in [0, 1] are shown x 100. `retained`: "
        "visual tokens kept per image, 100 x (1 - ratio). Avg.: the mean over benchmarks "
        "of score / the `none` score (a benchmark whose `none` score is 0 is left out; "
        "[k of n] when it covers fewer than all benchmarks)."
    )
    tokens_header = ["method", "ratio", *benchmarks]
    tokens_rows = [
        [s.method, _ratio_text(s), *(_tokens(results.get(b, s)) for b in benchmarks)]
        for s in results.settings()
    ]
    lines += ["", "## Mean prompt tokens per request", "", *_table(tokens_header, tokens_rows)]
    lines += [
        "",
        "`usage.prompt_tokens` as the server reported it: pruning shortens the prompt by the "
        "visual tokens it removes (an endpoint that ignores the prune fields shows no drop).",
    ]
    for benchmark in benchmarks:
        lines += _breakdown(results, benchmark)
    if notes:
        lines += ["", "## Notes", ""] + [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def _breakdown(results: Results, benchmark: str) -> list[str]:
    """Every metric of a benchmark that reports more than its headline (shapes' question
    types, POPE's F1, MME's perception and cognition): pruning often hurts one part."""
    main = get_benchmark(benchmark).main_metric
    scored = [r for r in results.by_benchmark[benchmark].values() if r.status == OK]
    metrics = sorted({m for r in scored for m in r.scores} - {main})
    if not metrics:
        return []
    metrics.insert(0, main)
    values = [v for r in scored for v in r.scores.values()]
    scale = 100.0 if all(abs(v) <= 1.0 for v in values) else 1.0
    rows = []
    for setting in results.settings():
        result = results.get(benchmark, setting)
        if result is None or result.status != OK:
            continue
        cells = [
            "-" if m not in result.scores else f"{result.scores[m] * scale:.1f}" for m in metrics
        ]
        rows.append([setting.method, _ratio_text(setting), *cells])
    return ["", f"## {benchmark}: every metric", "", *_table(["method", "ratio", *metrics], rows)]


def _tokens(result: SettingResult | None) -> str:
    if result is None or result.status != OK or result.mean_prompt_tokens is None:
        return "-"
    return f"{result.mean_prompt_tokens:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def write_csv(results: Results, path: Path) -> Path:
    """The summary table with unrounded values; a refused cell reads ``refused``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["method", "ratio", "retained_percent", *results.benchmarks, "avg_percent_of_none"]
        )
        for setting in results.settings():
            cells: list[Any] = []
            for benchmark in results.benchmarks:
                result = results.get(benchmark, setting)
                if result is not None and result.status == REFUSED:
                    cells.append(REFUSED)
                else:
                    value = results.main_score(benchmark, setting)
                    cells.append("" if value is None else repr(value))
            relative, _ = results.relative(setting)
            writer.writerow(
                [
                    setting.method,
                    "" if setting.ratio is None else f"{setting.ratio:g}",
                    repr(round(setting.retained_percent, 6)),
                    *cells,
                    "" if relative is None else repr(relative),
                ]
            )
    return path


def write_scores_csv(results: Results, path: Path) -> Path:
    """Every metric, one row each, with the setting's status and counts."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["benchmark", "method", "ratio", "status", "samples", "errors", "metric", "value"]
        )
        for benchmark, settings in results.by_benchmark.items():
            for result in settings.values():
                ratio = "" if result.ratio is None else f"{result.ratio:g}"
                head = [benchmark, result.method, ratio, result.status]
                counts = [result.samples, result.errors]
                if result.status != OK:
                    writer.writerow([*head, *counts, "", ""])
                for metric, value in result.scores.items():
                    writer.writerow([*head, *counts, metric, repr(value)])
    return path


def plot(results: Results, path: Path) -> Path:
    """Score vs % of visual tokens retained: one panel per benchmark, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(results.benchmarks)
    with_average = len(panels) > 1
    count = len(panels) + with_average
    figure, axes = plt.subplots(1, count, figsize=(5 * count, 4), squeeze=False)
    methods = list(dict.fromkeys(s.method for s in results.settings() if s.method != NONE))
    for axis, benchmark in zip(axes[0], [*panels, *([None] if with_average else [])], strict=True):
        base = _panel_value(results, benchmark, Setting(NONE))
        if base is not None:
            axis.axhline(base, color="grey", linestyle="--", linewidth=1)
            axis.plot([100.0], [base], "k*", markersize=10, label="none")
        for method in methods:
            points = sorted(
                (s.retained_percent, v)
                for s in results.settings()
                if s.method == method and (v := _panel_value(results, benchmark, s)) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=method)
            else:
                refused = any(
                    (r := results.get(b, s)) is not None and r.status == REFUSED
                    for b in results.benchmarks
                    for s in results.settings()
                    if s.method == method
                )
                label = f"{method} (refused)" if refused else f"{method} (no score)"
                axis.plot([], [], linestyle="none", label=label)
        if benchmark is None:
            axis.set_title("average")
            axis.set_ylabel("% of none")
        else:
            metric = get_benchmark(benchmark).main_metric
            axis.set_title(benchmark)
            fractional = _fractional(results, benchmark)
            axis.set_ylabel(f"{metric} x 100" if fractional else metric)
        axis.set_xlabel("visual tokens retained (%)")
        axis.set_xlim(0, 105)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    if results.model:
        figure.suptitle(results.model)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _panel_value(results: Results, benchmark: str | None, setting: Setting) -> float | None:
    """A point of a panel: the main score as shown in the table, or the average's % (only
    where it covers every benchmark: a partial average is not comparable)."""
    if benchmark is None:
        value, covered = results.relative(setting)
        return value if covered == len(results.benchmarks) else None
    score = results.main_score(benchmark, setting)
    if score is None:
        return None
    return score * 100.0 if _fractional(results, benchmark) else score


def write_report(out: Path, results: Results) -> list[Path]:
    """summary.md, summary.csv, scores.csv and summary.png from ``results``."""
    md = out / SUMMARY_MD
    md.write_text(markdown(results), encoding="utf-8")
    written = [md, write_csv(results, out / SUMMARY_CSV)]
    written.append(write_scores_csv(results, out / SCORES_CSV))
    written.append(plot(results, out / SUMMARY_PNG))
    return written
