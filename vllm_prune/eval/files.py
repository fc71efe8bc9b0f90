"""Reading benchmark files, with errors that name the file and the line.

JSON, JSON Lines and TSV go through Hugging Face ``datasets``; its parse errors do not
name the file and count rows from 0 without blank lines, so on failure the file is
scanned here to report ``path:line``. Nothing is skipped: an empty file, a malformed
line, or a record without a required field stops the load with BenchmarkFormatError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_prune.eval.sample import Sample


class BenchmarkFormatError(ValueError):
    """A benchmark file does not hold what its format promises; the message says where."""


def need_file(path: Path, layout: str) -> Path:
    """``path`` if it is a file, else an error that says which layout was expected."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected layout: {layout})")
    return path


@dataclass
class Records:
    """Rows of one file plus where each came from, for error messages."""

    path: Path
    rows: list[dict[str, Any]]
    json_lines: bool  # rows are the file's non-blank lines, in order
    unit: str = "record"  # what a row is called in messages when not a line
    _lines: list[int] | None = field(default=None, repr=False)

    def where(self, index: int) -> str:
        """``path:line`` for a JSON Lines row, ``path: record n`` (or ``row n``) otherwise."""
        if not self.json_lines:
            return f"{self.path}: {self.unit} {index + 1}"
        if self._lines is None:
            with self.path.open(encoding="utf-8") as handle:
                self._lines = [n for n, line in enumerate(handle, 1) if line.strip()]
        return f"{self.path}:{self._lines[index]}"

    def get(self, index: int, key: str) -> Any:
        """The row's value for ``key``; a missing or null value is an error, not a skip."""
        value = self.rows[index].get(key)
        if value is None:
            raise BenchmarkFormatError(f"{self.where(index)}: missing field {key!r}")
        return value


def read_records(path: Path, layout: str, field: str | None = None) -> Records:
    """A JSON Lines file, a JSON list, or the list under ``field`` of a JSON object."""
    need_file(path, layout)
    json_lines = field is None and _first_char(path) == "{"
    options: dict[str, Any] = {} if field is None else {"field": field}
    rows = _load("json", path, json_lines, **options)
    if not rows:
        raise BenchmarkFormatError(f"{path}: no records")
    return Records(path, rows, json_lines)


def read_tsv(path: Path, layout: str) -> Records:
    """A tab-separated file with a header row; every column read as text, '' as missing."""
    import datasets

    need_file(path, layout)
    _refuse_empty(path)
    with path.open(encoding="utf-8") as handle:
        columns = handle.readline().rstrip("\r\n").split("\t")
    features = datasets.Features({name: datasets.Value("string") for name in columns})
    # keep_default_na=False: an option whose text is "None" or "NA" stays text.
    rows = _load("csv", path, False, sep="\t", features=features, keep_default_na=False)
    if not rows:
        raise BenchmarkFormatError(f"{path}: no rows after the header")
    for row in rows:  # an empty cell is a missing value, as in the JSON formats
        for key, value in row.items():
            if value == "":
                row[key] = None
    return Records(path, rows, json_lines=False, unit="row")


def read_json(path: Path, layout: str) -> Any:
    """A whole JSON document (objects keyed by id, which ``datasets`` cannot read as rows)."""
    need_file(path, layout)
    _refuse_empty(path)
    with path.open(encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(
                f"{path}:{error.lineno}: invalid JSON at column {error.colno}: {error.msg}"
            ) from error


def require_images(samples: Iterable[Sample], layout: str) -> None:
    """Every image file the samples name exists, checked once per file."""
    paths = {image for sample in samples for image in sample.images if isinstance(image, Path)}
    missing = sorted(path for path in paths if not path.is_file())
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image file(s) missing, first {missing[0]} (expected layout: {layout})"
        )


def _load(builder: str, path: Path, json_lines: bool, **options: Any) -> list[dict[str, Any]]:
    import datasets
    from datasets.exceptions import DatasetGenerationError

    _refuse_empty(path)
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except DatasetGenerationError as error:
        raise _explain(path, builder, json_lines, error.__cause__ or error) from error
    return table.to_list()


def _explain(
    path: Path, builder: str, json_lines: bool, cause: BaseException
) -> BenchmarkFormatError:
    """Find the malformed line ``datasets`` stumbled on; else pass on its message."""
    if builder == "json":
        located = _locate_json_error(path, json_lines)
        if located is not None:
            return located
    if isinstance(cause, KeyError):  # the ``field`` asked for is not in the document
        return BenchmarkFormatError(f"{path}: no top-level field {cause}")
    # pandas names the line itself ("Expected 6 fields in line 5, saw 7").
    return BenchmarkFormatError(f"{path}: {str(cause).strip()}")


def _locate_json_error(path: Path, json_lines: bool) -> BenchmarkFormatError | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        return BenchmarkFormatError(f"{path}: not UTF-8 text at byte {error.start}")
    if json_lines:  # each non-blank line is one record
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                return BenchmarkFormatError(
                    f"{path}:{number}: invalid JSON at column {error.colno}: {error.msg}"
                )
            if not isinstance(record, dict):
                return BenchmarkFormatError(f"{path}:{number}: not a JSON object")
        return None
    try:
        json.loads(text)
        return None  # one valid document: the problem is not syntax
    except json.JSONDecodeError as error:
        document_error = error
    return BenchmarkFormatError(
        f"{path}:{document_error.lineno}: invalid JSON at column {document_error.colno}: "
        f"{document_error.msg}"
    )


def _refuse_empty(path: Path) -> None:
    if not _first_char(path):
        raise BenchmarkFormatError(f"{path}: empty file")


def _first_char(path: Path) -> str:
    """First non-blank character, read in chunks (some files are one 300 MB line)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        while chunk := handle.read(1 << 16):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""
