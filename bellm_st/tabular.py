"""Reading the tables that training and evaluation data come in (TSV, CSV, JSONL).

One reader serves every data format so a bad file always fails the same way: the error names
the file and the line, says what was expected and how to fix it. TSV is read without quoting
(sentences contain ``"``), as the project's data is written; CSV follows the usual quoting rules
(what spreadsheets and ``pandas.to_csv`` write); JSONL has one object per line. Files are UTF-8,
with or without the byte-order mark spreadsheets write.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl")


class DataFileError(ValueError):
    """A data file that cannot be read as the table it should be; the message names file and line."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        location = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{location}: {problem}")


@dataclass(frozen=True)
class Row:
    """One data row and where it came from (for error messages further down)."""

    line: int
    values: dict[str, str]


@dataclass(frozen=True)
class Table:
    """A whole table: its file, its column names (in file order) and its rows."""

    path: Path
    columns: tuple[str, ...]
    rows: list[Row]

    def require(self, required: Sequence[str], hint: str) -> None:
        """Fail with the missing column names and the expected header when columns are absent."""
        missing = [column for column in required if column not in self.columns]
        if missing:
            raise DataFileError(
                self.path,
                1,
                f"missing column(s) {', '.join(missing)}; the header has {', '.join(self.columns) or 'nothing'}. "
                f"Expected a header like: {hint}",
            )


def read_text_file(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents (a leading byte-order mark dropped), or an error naming file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataFileError(
            path, line, f"byte {data[error.start]:#04x} is not UTF-8; re-save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8 FILE)"
        ) from None


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DataFileError(path, None, "no such file; check the path (relative paths are read from --data-dir)")
    if path.is_dir():
        raise DataFileError(path, None, f"is a folder; give a {', '.join(TABLE_SUFFIXES)} file inside it")
    if path.suffix not in TABLE_SUFFIXES:
        raise DataFileError(path, None, f"unsupported file type {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataFileError(path, None, "the file is empty; it needs a header line and at least one row")


def _delimiter_hint(header_line: str, delimiter: str) -> str:
    for name, candidate in (("commas", ","), ("tabs", "\t"), ("semicolons", ";")):
        if candidate != delimiter and candidate in header_line:
            return f" (the header looks separated by {name}: is this the right file type?)"
    return ""


def _read_delimited(path: Path, delimiter: str) -> Table:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    text = read_text_file(path)
    header_line = io.StringIO(text).readline()
    if not header_line.strip():
        raise DataFileError(path, 1, "the first line is empty; it must be the header naming the columns")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = tuple(name.strip() for name in next(reader))
    if len(header) < 2:
        separator = "tab" if delimiter == "\t" else "comma"
        raise DataFileError(
            path, 1, f"the header has a single column {header[0]!r}; columns must be {separator}-separated"
            + _delimiter_hint(header_line, delimiter),
        )
    rows = []
    record_end = reader.line_num
    for fields in reader:
        # A quoted CSV field may span lines: a record starts on the line after the previous one ended.
        line_number, record_end = record_end + 1, reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if len(fields) != len(header):
            raise DataFileError(
                path,
                line_number,
                f"expected {len(header)} fields ({', '.join(header)}) but found {len(fields)}; "
                "fields must be separated by exactly one tab and sentences must not contain tabs"
                if delimiter == "\t"
                else f"expected {len(header)} fields ({', '.join(header)}) but found {len(fields)}",
            )
        rows.append(Row(line_number, dict(zip(header, fields))))
    if not rows:
        raise DataFileError(path, None, "the file has a header but no data rows")
    return Table(path, header, rows)


def _read_jsonl(path: Path) -> Table:
    columns: dict[str, None] = {}
    rows = []
    for line_number, line in enumerate(io.StringIO(read_text_file(path)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFileError(path, line_number, f"not valid JSON ({error.msg}); write one object per line")
        if not isinstance(record, dict):
            raise DataFileError(path, line_number, f"expected a JSON object, got {type(record).__name__}")
        for key in record:
            columns.setdefault(key, None)
        rows.append(Row(line_number, {key: "" if value is None else str(value) for key, value in record.items()}))
    if not rows:
        raise DataFileError(path, None, "the file holds no JSON objects")
    return Table(path, tuple(columns), rows)


def read_table(path: str | os.PathLike) -> Table:
    """Read a TSV (no quoting), CSV or JSONL file into rows keyed by column name."""
    path = Path(path)
    _check_path(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    return _read_delimited(path, "\t" if path.suffix == ".tsv" else ",")


def parse_float(table: Table, row: Row, column: str) -> float:
    """A numeric field, or an error naming the file, line, column and the bad value."""
    value = row.values.get(column, "")
    try:
        return float(value)
    except ValueError:
        raise DataFileError(table.path, row.line, f"column {column!r} must be a number, got {value!r}") from None

