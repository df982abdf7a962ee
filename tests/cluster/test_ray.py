"""bellm_st.cluster on a real local Ray cluster (2 CPUs, one per module): a tiny model, a few hundred texts."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

import bellm_st  # noqa: E402
from bellm_st.cli import app  # noqa: E402
from bellm_st.cluster import EmbedBatches, embed_dataset, encode_files  # noqa: E402

TEXTS = [f"text number {index} {'word ' * (index % 7)}" for index in range(300)]
# Actors take half a CPU each, so two of them leave Ray Data a CPU to read files with.
ACTORS = {"workers": 2, "cpus_per_worker": 0.5}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, logging_level="WARNING", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_model_dir) -> str:
    path = tmp_path_factory.mktemp("saved-for-ray")
    bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean", device="cpu").save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def expected(saved_model) -> np.ndarray:
    return bellm_st.load(saved_model, device="cpu").encode(TEXTS, normalize_embeddings=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three parquet files and a JSONL file of 75 texts each, ids 0..299 in order."""
    folder = tmp_path_factory.mktemp("corpus")
    for part in range(3):
        rows = range(part * 75, part * 75 + 75)
        pq.write_table(pa.table({"id": list(rows), "text": [TEXTS[row] for row in rows]}), folder / f"part-{part}.parquet")
    with open(folder / "part-3.jsonl", "w", encoding="utf-8") as handle:
        for row in range(225, 300):
            handle.write(json.dumps({"id": row, "text": TEXTS[row]}) + "\n")
    return folder


def read_outputs(folder) -> pa.Table:
    return pa.concat_tables([pq.read_table(folder / f"part-{part}.parquet") for part in range(4)])


def vectors_of(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


def test_the_python_api_keeps_ids_and_order_and_gives_encode_vectors(cluster, saved_model, expected):
    dataset = ray.data.from_items([{"id": row, "text": text} for row, text in enumerate(TEXTS)], override_num_blocks=6)
    dataset.context.execution_options.preserve_order = True
    embedded = embed_dataset(dataset, saved_model, **ACTORS, rows_per_call=32, normalize_embeddings=True)
    table = pa.concat_tables(list(embedded.iter_batches(batch_format="pyarrow", batch_size=None)))
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors_of(table), expected, atol=1e-5)


def test_the_command_writes_one_file_per_input_and_resumes(cluster, saved_model, expected, corpus, tmp_path):
    output = tmp_path / "vectors"
    options = ["--output", str(output), "--model", saved_model, "--workers", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, ["encode", "--ray", "--input", f"{corpus}/", *options])  # a folder, as Ray Data reads one
    assert result.exit_code == 0, result.output
    assert "wrote 4 files (300 vectors)" in " ".join(result.output.split())
    table = read_outputs(output)
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    assert table.column("text").to_pylist() == TEXTS
    np.testing.assert_allclose(vectors_of(table), expected, atol=1e-5)
    (output / "part-1.parquet").unlink()  # as if the run had stopped before this file
    again = CliRunner().invoke(app, ["encode", "--ray", "--input", str(corpus / "part-*"), *options])  # the same files
    message = " ".join(again.output.split())  # rich wraps long lines
    assert again.exit_code == 0 and "wrote 1 files (75 vectors)" in message and "3 already there" in message
    assert read_outputs(output).column("id").to_pylist() == list(range(len(TEXTS)))


class DiesOnce(EmbedBatches):
    """Kills its own process on its first batch, once per marker file: Ray must restart it and rerun the batch."""

    marker = None

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


def test_a_killed_actor_is_replaced_without_losing_or_doubling_rows(cluster, saved_model, expected, corpus, tmp_path,
                                                                    monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    monkeypatch.setattr(DiesOnce, "marker", str(tmp_path / "died"))
    original = embed_dataset

    def dying(dataset, model, **options):
        return original(dataset, model, embedder=DiesOnce, rows_per_call=25, **options)

    monkeypatch.setattr("bellm_st.cluster.actor.embed_dataset", dying)
    summary = encode_files(str(corpus / "*.parquet"), tmp_path / "vectors", saved_model, **ACTORS,
                           normalize_embeddings=True, show_progress=False)
    assert (tmp_path / "died").exists()
    assert summary == {"files_written": 3, "files_skipped": 0, "rows": 225}
    table = pa.concat_tables([pq.read_table(tmp_path / "vectors" / f"part-{part}.parquet") for part in range(3)])
    assert table.column("id").to_pylist() == list(range(225))  # each id once, in order
    np.testing.assert_allclose(vectors_of(table), expected[:225], atol=1e-5)


def test_bad_rows_stop_the_command_before_anything_is_written(cluster, saved_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["fine", None]}), inputs / "a.parquet")
    result = CliRunner().invoke(app, ["encode", "--ray", "--input", str(inputs / "*.parquet"), "--output",
                                      str(tmp_path / "out"), "--model", saved_model])
    assert result.exit_code == 2 and "column 'text', row 1" in result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["encode", "--ray", "--input", str(inputs / "*.parquet"), "--output",
                                      str(tmp_path / "out"), "--batch-size", "8"])
    assert result.exit_code == 2 and "--batch-size" in result.output
