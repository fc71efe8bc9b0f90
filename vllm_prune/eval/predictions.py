"""Predictions on disk: one JSON Lines file per benchmark and setting, appended as answers
arrive, so an interrupted run loses at most the line it was writing.

A line is ``{"id", "answer", "prompt_tokens", "completion_tokens", "finish_reason"}`` for
an answered sample, or ``{"id", "error": {"status", "message"}}`` for a request the server
refused (HTTP 400/422). When one id has several lines the last one wins: a rerun asks
again for samples whose last line is an error, and appends the new answer.

An unparsable *last* line is what a killed run leaves (a line cut mid-write): it is
reported, cut off the file, and its sample asked again. An unparsable line anywhere else
is not something this program writes, so it stops the run with ``path:line``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


class PredictionFileError(ValueError):
    """A predictions file that is not what this module writes; the message says where."""


@dataclass(frozen=True)
class Record:
    """The outcome of one request: an answer, or the server's refusal."""

    id: str
    answer: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error_status: int | None = None
    error_message: str | None = None

    @property
    def answered(self) -> bool:
        return self.answer is not None

    def to_json(self) -> dict[str, Any]:
        if self.answered:
            return {
                "id": self.id,
                "answer": self.answer,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "finish_reason": self.finish_reason,
            }
        return {
            "id": self.id,
            "error": {"status": self.error_status, "message": self.error_message},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        if "answer" in data:
            return cls(
                id=str(data["id"]),
                answer=str(data["answer"]),
                prompt_tokens=data.get("prompt_tokens"),
                completion_tokens=data.get("completion_tokens"),
                finish_reason=data.get("finish_reason"),
            )
        error = data["error"]
        return cls(id=str(data["id"]), error_status=error["status"], error_message=error["message"])


def read_predictions(
    path: Path, repair: bool = False, log: TextIO | None = None
) -> dict[str, Record]:
    """The last record per id; ``{}`` if the file does not exist.

    ``repair``: cut an unparsable last line (an interrupted write) off the file, so
    appending continues on a clean line; without it that line is only ignored.
    """
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records: dict[str, Record] = {}
    good_end = 0  # byte offset after the last good line
    offset = 0
    for number, line in enumerate(lines, 1):
        end = offset + len(line) + 1
        if line.strip():
            try:
                record = _parse(line)
            except (ValueError, KeyError, TypeError) as error:
                if any(rest.strip() for rest in lines[number:]):
                    raise PredictionFileError(
                        f"{path}:{number}: not a prediction record ({error}); this file was "
                        "not written by vllm-prune eval, or was edited: fix or delete it"
                    ) from error
                action = "cut off; its sample will be asked again" if repair else "ignored"
                print(
                    f"warning: {path}:{number}: incomplete last line from an interrupted run "
                    f"({len(line)} bytes) {action}",
                    file=log or sys.stderr,
                )
                if repair:
                    with path.open("r+b") as handle:
                        handle.truncate(good_end)
                break
            records[record.id] = record
            good_end = min(end, len(raw))
        offset = end
    if repair and good_end and not raw[:good_end].endswith(b"\n"):
        with path.open("ab") as handle:  # a complete last line that lacks its newline
            handle.write(b"\n")
    return records


def _parse(line: bytes) -> Record:
    data = json.loads(line)
    if not isinstance(data, dict) or "id" not in data:
        raise ValueError("not a JSON object with an 'id'")
    if "answer" not in data and "error" not in data:
        raise ValueError("neither 'answer' nor 'error'")
    return Record.from_json(data)


class PredictionWriter:
    """Appends records, one flushed line each (call from one thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = path.open("a", encoding="utf-8")

    def write(self, record: Record) -> None:
        self._handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        self._handle.flush()

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
