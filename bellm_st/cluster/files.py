"""Folders of parquet/JSONL files in, one parquet file of vectors per input file out, on Ray.

Every input is checked before a model loads (text column, types, blank rows), so a bad file fails
the run at once with its name, column and row, and nothing is written. Each output file appears
whole or not at all: rows go to a hidden partial file that is renamed when its last row arrives.
A re-run skips outputs already there (checked to come from the same input, column and model), so
a stopped run resumes file by file. The driver writes, so the output folder need not be shared
between nodes; every vector passes through the driver on its way there.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bellm_st.inputs import validate_text

INPUT_SUFFIXES = (".parquet", ".jsonl")
PARTIAL_PREFIX = ".bellm-st-partial-"  # an output file still being written (removed when a run starts)
METADATA_KEY = b"bellm_st"  # parquet metadata naming the source, text column and model of an output
RAY_PATH_COLUMN = "path"  # the column Ray Data adds to say which file a row came from
# An actor works on one block at a time, and Ray Data may read many small files as one block: at
# least this many blocks per worker keep every worker busy on small inputs.
BLOCKS_PER_WORKER = 4


@dataclass(frozen=True)
class Shard:
    """One input file, its output file and its number of rows."""

    source: Path
    target: Path
    rows: int


def encode_files(pattern: str, output_dir: str | os.PathLike, model: str | None = None, *, text_column: str = "text",
                 output_column: str = "embedding", workers: int | None = None, device: str | None = None,
                 cpus_per_worker: float = 1, show_progress: bool = True, **options: Any) -> dict[str, int]:
    """Embed the ``text_column`` of every file ``pattern`` names (a glob or a folder) into ``output_dir``,
    one parquet file each.

    Connects to the Ray cluster in ``RAY_ADDRESS`` (or the one this process already joined), or
    starts a local one. ``device`` is ``cuda`` (one GPU per worker; the default when the cluster
    has GPUs) or ``cpu``; ``workers`` defaults to the cluster's GPUs, or on CPUs to one per
    ``cpus_per_worker`` CPUs, less one CPU left for reading (CPU workers get less than
    ``cpus_per_worker`` where needed to leave it). ``options`` go to
    :class:`bellm_st.cluster.actor.EmbedBatches`. Returns counts of files written and skipped and rows embedded.
    """
    import ray

    from bellm_st.api import default_model_name
    from bellm_st.cluster.actor import embed_dataset

    model_name = model or default_model_name()
    todo, done = plan_shards(pattern, Path(output_dir), text_column, output_column, model_name)
    summary = {"files_written": 0, "files_skipped": len(done), "rows": 0}
    if not todo:
        return summary
    started = not ray.is_initialized()
    if started:
        ray.init(logging_level="WARNING")
    try:
        resources = ray.cluster_resources()
        if device is None:
            device = "cuda" if resources.get("GPU", 0) >= 1 else "cpu"
        gpu = device.startswith("cuda")
        spare_cpus = max(resources.get("CPU", 1) - 1, 0.5)  # one CPU stays free, or Ray Data cannot read the files
        if workers is None:
            workers = int(resources.get("GPU", 0)) if gpu else int(spare_cpus // cpus_per_worker)
        workers = max(1, workers)
        cpus_per_worker = min(cpus_per_worker, spare_cpus / workers)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        dataset = read_shards(todo, blocks=BLOCKS_PER_WORKER * workers)
        dataset.context.execution_options.preserve_order = True  # rows reach each output file in input order
        dataset.context.enable_progress_bars = show_progress
        embedded = embed_dataset(dataset, model, workers=workers, gpus_per_worker=1 if gpu else 0,
                                 cpus_per_worker=0 if gpu else cpus_per_worker, device="cuda" if gpu else "cpu",
                                 text_column=text_column, output_column=output_column, **options)
        batches = embedded.iter_batches(batch_format="pyarrow", batch_size=None)
        summary["rows"] = write_shards(batches, todo, model_name, text_column, show_progress)
        summary["files_written"] = len(todo)
    finally:
        if started:
            ray.shutdown()
    return summary


def read_shards(shards: list[Shard], blocks: int) -> Any:
    """One Ray dataset over every input file, each row tagged with its file's path, in at least ``blocks`` blocks."""
    import ray

    parts = []
    # read_json without lines=True reads JSONL through pyarrow; lines=True makes pandas blocks, which
    # Ray Data 2.60 cannot batch together with the parquet files' arrow blocks.
    for suffix, reader in ((".parquet", ray.data.read_parquet), (".jsonl", ray.data.read_json)):
        paths = [str(shard.source) for shard in shards if shard.source.suffix == suffix]
        if paths:
            parts.append(reader(paths, include_paths=True, file_extensions=[suffix.lstrip(".")],
                                override_num_blocks=max(len(paths), blocks)))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def input_files(pattern: str, output_dir: Path) -> list[Path]:
    """The files ``pattern`` names: a glob, or a folder read as Ray Data reads one.

    A folder gives its parquet and JSONL files at any depth, leaving out other files, names that
    start with ``.`` or ``_`` (``_SUCCESS``, partial files) and the output folder if it lies inside.
    """
    given = Path(os.path.expanduser(pattern))
    if given.is_dir():
        folder, output = given.resolve(), output_dir.resolve()
        sources = [
            path for path in sorted(folder.rglob("*"))
            if path.suffix in INPUT_SUFFIXES and path.is_file() and output not in path.parents
            and not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
        ]
        if not sources:
            raise FileNotFoundError(f"the folder {pattern} holds no {' or '.join(INPUT_SUFFIXES)} files; "
                                    "give the folder of your corpus, or a glob such as 'corpus/*.parquet'")
        return sources
    sources = [Path(path).resolve() for path in sorted(glob.glob(str(given), recursive=True))]
    sources = [path for path in sources if path.is_file()]
    if not sources:
        raise FileNotFoundError(f"no files match {pattern!r}; give a folder, or a glob such as 'corpus/*.parquet'")
    return sources


def plan_shards(pattern: str, output_dir: Path, text_column: str, output_column: str,
                model_name: str) -> tuple[list[Shard], list[Shard]]:
    """The files still to embed and those already done; every problem found here fails before any work."""
    sources = input_files(pattern, output_dir)
    unsupported = [path for path in sources if path.suffix not in INPUT_SUFFIXES]
    if unsupported:
        raise ValueError(f"{unsupported[0]}: unsupported file type {unsupported[0].suffix!r}; "
                         f"use {' or '.join(INPUT_SUFFIXES)} (narrow the glob, e.g. 'corpus/*.parquet')")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output {output_dir} is a file; give a folder for the output files")
    targets: dict[Path, Path] = {}
    for source in sources:
        target = (output_dir / (source.stem + ".parquet")).resolve()
        if target in targets:
            raise ValueError(f"{targets[target]} and {source} would both write {target.name}; "
                             "give input files distinct names")
        if target == source:
            raise ValueError(f"{source} would be overwritten by its own vectors; write to another folder")
        targets[target] = source
    _check_output_folder(output_dir, set(targets))
    todo, done = [], []
    for target, source in targets.items():
        if target.exists():
            _check_existing_output(target, source, text_column, model_name)
            done.append(Shard(source, target, pq.ParquetFile(target).metadata.num_rows))
        else:
            todo.append(Shard(source, target, check_input(source, text_column, output_column)))
    return todo, done


def _check_output_folder(output_dir: Path, targets: set[Path]) -> None:
    """Remove partial files of an interrupted run; refuse a folder holding anything but this run's outputs."""
    if not output_dir.exists():
        return
    others = []
    for entry in sorted(output_dir.iterdir()):
        if entry.name.startswith(PARTIAL_PREFIX) and entry.is_file():
            entry.unlink()
        elif entry.resolve() not in targets:
            others.append(entry.name)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ValueError(f"--output {output_dir} already holds other data ({shown}); "
                         "give an empty or new folder, or the one an earlier run of these inputs wrote")


def _check_existing_output(target: Path, source: Path, text_column: str, model_name: str) -> None:
    """An output already there must be ours, for this input, column and model; otherwise stop."""
    try:
        metadata = (pq.read_schema(target).metadata or {}).get(METADATA_KEY)
    except (pa.ArrowInvalid, OSError):
        metadata = None
    if metadata is None:
        raise ValueError(f"{target} exists but was not written by bellm-st encode --ray; move it away or "
                         "choose another --output folder")
    recorded = json.loads(metadata)
    expected = {"source": str(source), "text_column": text_column, "model": model_name}
    changed = {key: recorded.get(key) for key, value in expected.items() if recorded.get(key) != value}
    if changed:
        raise ValueError(f"{target} was written with {changed}, not {({key: expected[key] for key in changed})}; "
                         "mixing them would mix vectors of different texts or models: use another --output folder")


def check_input(source: Path, text_column: str, output_column: str) -> int:
    """The file's row count, after checking its text column (present, strings, none blank)."""
    if source.suffix == ".jsonl":
        return _check_jsonl(source, text_column, output_column)
    try:
        schema = pq.read_schema(source)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{source}: not a readable parquet file ({error})") from None
    _check_columns(source, schema.names, text_column, output_column)
    column_type = schema.field(text_column).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise TypeError(f"{source}: column {text_column!r} holds {column_type}, not text; convert it to strings")
    column = pq.read_table(source, columns=[text_column]).column(text_column)
    if len(column) == 0:
        raise ValueError(f"{source} has no rows; remove it from the inputs")
    bad = pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_trim_whitespace(column), "")).to_numpy(zero_copy_only=False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        validate_text(column[row].as_py(), where=f"{source}: column {text_column!r}, row {row} (counting from 0),")
    return len(column)


def _check_columns(source: Path, names: list[str], text_column: str, output_column: str) -> None:
    if text_column not in names:
        raise ValueError(f"{source}: no column {text_column!r}; it has {', '.join(names) or 'none'}. "
                         "Pass the right one with --text-column")
    if output_column in names:
        raise ValueError(f"{source} already has a column {output_column!r}; pick another --output-column")
    if RAY_PATH_COLUMN in names:
        raise ValueError(f"{source} has a column {RAY_PATH_COLUMN!r}, the name Ray Data gives the column saying "
                         "which file a row came from; rename that column")


def _check_jsonl(source: Path, text_column: str, output_column: str) -> int:
    """Row count of a JSONL file whose objects all hold a text and keep one JSON type per field."""
    kinds: dict[str, tuple[str, int]] = {}
    rows = 0
    with open(source, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{source}, line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{source}, line {line_number}: expected a JSON object, got {type(record).__name__}")
            if rows == 0:
                _check_columns(source, list(record), text_column, output_column)
            rows += 1
            if text_column not in record:
                raise ValueError(f"{source}, line {line_number}: no field {text_column!r} in this object")
            validate_text(record[text_column], where=f"{source}, line {line_number}: field {text_column!r}")
            for key, value in record.items():
                if value is None:
                    continue
                kind = type(value).__name__
                first = kinds.setdefault(key, (kind, line_number))
                if first[0] != kind and {first[0], kind} != {"int", "float"}:
                    raise TypeError(f"{source}, line {line_number}: field {key!r} is {kind} here but {first[0]} on "
                                    f"line {first[1]}; Ray's reader needs one type per field")
    if rows == 0:
        raise ValueError(f"{source} has no rows; remove it from the inputs")
    return rows


def write_shards(batches: Iterator[pa.Table], shards: list[Shard], model_name: str, text_column: str,
                 show_progress: bool) -> int:
    """Write embedded rows into their files' partial outputs, renaming each when complete; returns rows written.

    Any failure, including rows missing or doubled, removes the partial files (finished files stay).
    """
    from tqdm.auto import tqdm

    by_source = {str(shard.source): shard for shard in shards}
    writers: dict[str, pq.ParquetWriter] = {}
    written = dict.fromkeys(by_source, 0)
    progress = tqdm(total=sum(shard.rows for shard in shards), unit="text", desc="Embedding", disable=not show_progress)
    try:
        for batch in batches:
            for source, part in _runs_by_source(batch):
                shard = by_source.get(source)
                if shard is None:
                    raise RuntimeError(f"Ray returned rows of {source}, which is not an input of this run")
                part = part.drop_columns([RAY_PATH_COLUMN])
                if source not in writers:
                    metadata = {METADATA_KEY: json.dumps({"source": source, "text_column": text_column,
                                                          "model": model_name, "rows": shard.rows})}
                    schema = part.schema.with_metadata({**(part.schema.metadata or {}), **metadata})
                    writers[source] = pq.ParquetWriter(_partial(shard), schema)
                writer = writers[source]
                writer.write_table(part.cast(writer.schema))
                written[source] += part.num_rows
                progress.update(part.num_rows)
                if written[source] > shard.rows:
                    raise RuntimeError(f"Ray returned {written[source]} rows of {source}, which has {shard.rows}")
                if written[source] == shard.rows:
                    writers.pop(source).close()
                    os.replace(_partial(shard), shard.target)
        missing = {source: shard.rows - written[source] for source, shard in by_source.items()
                   if written[source] != shard.rows}
        if missing:
            raise RuntimeError(f"Ray returned too few rows: {missing} missing")
    except BaseException:
        for source, writer in writers.items():
            writer.close()
            _partial(by_source[source]).unlink(missing_ok=True)
        raise
    finally:
        progress.close()
    return sum(written.values())


def _partial(shard: Shard) -> Path:
    return shard.target.with_name(PARTIAL_PREFIX + shard.target.name)


def _runs_by_source(batch: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Consecutive rows of one input file (a batch may span files)."""
    paths = batch.column(RAY_PATH_COLUMN).to_pylist()
    start = 0
    for end in range(1, len(paths) + 1):
        if end == len(paths) or paths[end] != paths[start]:
            yield os.path.abspath(paths[start]), batch.slice(start, end - start)
            start = end
