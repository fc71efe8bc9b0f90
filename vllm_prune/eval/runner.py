"""Run a benchmark for one setting: ask the server for every sample not yet answered,
with bounded concurrency and a progress bar, appending each answer to the setting's
predictions file, then score the whole file.

A setting whose first request the server refuses (HTTP 400/422, e.g. a method the model
cannot run) is recorded as ``refused`` with the server's message and not asked further.
A later refusal of one sample (a prompt too long, say) is kept in the file as an error
line and scored as an empty answer; a rerun asks again for those samples.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import openai
from tqdm import tqdm

from vllm_prune.eval.benchmarks import Sample, score_benchmark
from vllm_prune.eval.client import Setting, ask
from vllm_prune.eval.predictions import PredictionWriter, Record, read_predictions

OK, REFUSED = "ok", "refused"


class RunConfigError(ValueError):
    """Existing predictions were made with other settings than this run's."""


@dataclass
class SettingResult:
    """What one setting scored on one benchmark (one row cell of the summary)."""

    benchmark: str
    method: str
    ratio: float | None
    status: str  # OK or REFUSED
    samples: int = 0  # samples scored
    errors: int = 0  # samples whose last request the server refused (scored as wrong)
    scores: dict[str, float] = field(default_factory=dict)
    mean_prompt_tokens: float | None = None
    message: str | None = None  # the server's refusal, or a note
    asked: int = 0  # requests sent by this run (not stored)

    @property
    def setting(self) -> Setting:
        return Setting(self.method, self.ratio)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["asked"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SettingResult:
        return cls(**{key: value for key, value in data.items() if key != "asked"})


@dataclass(frozen=True)
class Job:
    """What every request of a run shares."""

    client: openai.OpenAI
    model: str
    max_tokens: int
    concurrency: int
    progress: bool = True
    log: TextIO | None = None  # default: sys.stderr at the time of writing


def predictions_path(out: Path, benchmark: str, setting: Setting) -> Path:
    return out / "predictions" / benchmark / f"{setting.name}.jsonl"


def check_run_config(folder: Path, config: dict[str, Any]) -> None:
    """Write ``folder/run.json``, or check that earlier predictions used the same config."""
    path = folder / "run.json"
    if path.exists():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in config if key in earlier and earlier[key] != config[key]]
        if changed:
            details = ", ".join(f"{k}: {earlier[k]!r} then, {config[k]!r} now" for k in changed)
            raise RunConfigError(
                f"{folder} holds predictions made with other settings ({details}); "
                "use another --out, or delete that folder to start over"
            )
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run_setting(
    job: Job, benchmark: str, samples: Sequence[Sample], setting: Setting, path: Path
) -> SettingResult:
    """Answer every sample (skipping those answered in ``path`` already) and score them."""
    records = read_predictions(path, repair=True, log=job.log)
    pending = [s for s in samples if not (s.id in records and records[s.id].answered)]
    asked = 0
    probe: Record | None = None
    if pending and not any(record.answered for record in records.values()):
        # Probe: a server that cannot run this setting refuses the first request.
        probe = ask(job.client, job.model, pending[0], setting, job.max_tokens)
        asked += 1
        if not probe.answered:
            return SettingResult(
                benchmark,
                setting.method,
                setting.ratio,
                REFUSED,
                message=f"HTTP {probe.error_status}: {probe.error_message}",
                asked=asked,
            )
        records[probe.id] = probe
        pending = pending[1:]
    if probe is not None or pending:
        with PredictionWriter(path) as writer:
            if probe is not None:
                writer.write(probe)
            asked += _ask_all(job, benchmark, samples, setting, pending, records, writer)
    result = score(benchmark, samples, setting, records)
    result.asked = asked
    return result


def _ask_all(
    job: Job,
    benchmark: str,
    samples: Sequence[Sample],
    setting: Setting,
    pending: Sequence[Sample],
    records: dict[str, Record],
    writer: PredictionWriter,
) -> int:
    """Ask for ``pending`` with at most ``job.concurrency`` requests in flight."""
    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(pending),
        desc=f"{benchmark} {setting.name}",
        unit="q",
        disable=not job.progress,
        file=job.log or sys.stderr,
        dynamic_ncols=True,
    )
    queue = list(reversed(pending))
    running: set[Future[Record]] = set()
    errors = 0
    executor = ThreadPoolExecutor(max_workers=job.concurrency, thread_name_prefix="eval")
    try:
        while queue or running:
            while queue and len(running) < job.concurrency:
                sample = queue.pop()
                running.add(
                    executor.submit(ask, job.client, job.model, sample, setting, job.max_tokens)
                )
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                record = future.result()  # EndpointError stops the run here
                writer.write(record)
                records[record.id] = record
                errors += not record.answered
                bar.update(1)
                if errors:
                    bar.set_postfix(refused=errors)
    finally:
        # On an error or Ctrl-C: drop what was not sent; answers so far are on disk.
        executor.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return len(pending)


def score(
    benchmark: str, samples: Sequence[Sample], setting: Setting, records: dict[str, Record]
) -> SettingResult:
    """Score the samples from their last records; a refused sample counts as an empty answer."""
    predictions = []
    errors = 0
    tokens: list[int] = []
    for sample in samples:
        record = records.get(sample.id)
        if record is None:
            raise RuntimeError(f"{benchmark} {setting.name}: sample {sample.id} has no record")
        if record.answered:
            predictions.append((sample, record.answer or ""))
            if record.prompt_tokens is not None:
                tokens.append(record.prompt_tokens)
        else:
            predictions.append((sample, ""))
            errors += 1
    result = SettingResult(benchmark, setting.method, setting.ratio, OK)
    result.samples = len(samples)
    result.errors = errors
    result.scores = score_benchmark(benchmark, predictions)
    result.mean_prompt_tokens = sum(tokens) / len(tokens) if tokens else None
    if errors:
        first = next(records[s.id] for s in samples if not records[s.id].answered)
        result.message = (
            f"{errors} of {len(samples)} requests refused, scored as wrong; first: "
            f"{first.error_message}"
        )
    return result
