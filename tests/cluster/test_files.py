"""Input checks and output folders of bellm_st.cluster.files: every problem is found before Ray starts."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bellm_st.cluster.files import PARTIAL_PREFIX, plan_shards


def write_parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def plan(folder, output, **options):
    return plan_shards(str(folder / "*"), output, options.get("text_column", "text"), "embedding", "tiny")


def test_a_missing_text_column_names_the_file_and_the_columns(tmp_path):
    write_parquet(tmp_path / "a.parquet", id=[1, 2], body=["x", "y"])
    with pytest.raises(ValueError, match=r"a\.parquet: no column 'text'; it has id, body"):
        plan(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("texts, problem", [
    (["fine", None, "x"], "row 1 .* NoneType"), (["fine", "x", "  "], "row 2 .* whitespace"), (["fine", ""], "row 1 .* empty"),
])
def test_null_and_blank_texts_name_file_column_and_row(tmp_path, texts, problem):
    write_parquet(tmp_path / "a.parquet", id=list(range(len(texts))), text=pa.array(texts, pa.string()))
    with pytest.raises((TypeError, ValueError), match=rf"a\.parquet: column 'text', {problem}"):
        plan(tmp_path, tmp_path / "out")


def test_mixed_types_are_refused_with_file_column_and_line(tmp_path):
    write_parquet(tmp_path / "a.parquet", id=[1], text=[7])
    with pytest.raises(TypeError, match=r"a\.parquet: column 'text' holds int64, not text"):
        plan(tmp_path, tmp_path / "out")
    (tmp_path / "a.parquet").unlink()
    (tmp_path / "b.jsonl").write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": 5}\n', encoding="utf-8")
    with pytest.raises(TypeError, match=r"b\.jsonl, line 2: field 'text' is int"):
        plan(tmp_path, tmp_path / "out")
    (tmp_path / "b.jsonl").write_text('{"id": 1, "text": "fine"}\n{"id": "two", "text": "ok"}\n', encoding="utf-8")
    with pytest.raises(TypeError, match=r"b\.jsonl, line 2: field 'id' is str here but int on line 1"):
        plan(tmp_path, tmp_path / "out")


def test_an_output_folder_with_other_data_is_refused_and_left_alone(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_parquet(inputs / "a.parquet", id=[1], text=["fine"])
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ValueError, match=r"already holds other data \(notes\.txt\)"):
        plan(inputs, output)
    (output / "notes.txt").unlink()
    write_parquet(output / "a.parquet", id=[1], text=["someone else's"])
    with pytest.raises(ValueError, match="was not written by bellm-st encode --ray"):
        plan(inputs, output)
    assert (output / "a.parquet").exists()


def test_an_output_from_another_model_is_refused_and_partial_files_are_cleared(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = write_parquet(inputs / "a.parquet", id=[1], text=["fine"])
    output = tmp_path / "out"
    output.mkdir()
    table = pa.table({"id": [1], "text": ["fine"]}).replace_schema_metadata(
        {"bellm_st": json.dumps({"source": str(source.resolve()), "text_column": "text", "model": "other"})})
    pq.write_table(table, output / "a.parquet")
    (output / f"{PARTIAL_PREFIX}b.parquet").write_bytes(b"half")
    with pytest.raises(ValueError, match=r"written with \{'model': 'other'\}, not \{'model': 'tiny'\}"):
        plan(inputs, output)
    assert not (output / f"{PARTIAL_PREFIX}b.parquet").exists()


def test_no_matching_files_unsupported_types_and_name_clashes(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        plan(tmp_path, tmp_path / "out")
    (tmp_path / "a.csv").write_text("text\nx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        plan(tmp_path, tmp_path / "out")
    (tmp_path / "a.csv").unlink()
    write_parquet(tmp_path / "a.parquet", id=[1], text=["x"])
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="would both write a.parquet"):
        plan(tmp_path, tmp_path / "out")


def test_a_folder_gives_its_parquet_and_jsonl_files_at_any_depth(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "2024").mkdir(parents=True)
    write_parquet(corpus / "a.parquet", id=[1, 2], text=["x", "y"])
    (corpus / "2024" / "b.jsonl").write_text('{"text": "z"}\n', encoding="utf-8")
    (corpus / "README.md").write_text("about the corpus", encoding="utf-8")
    (corpus / "_SUCCESS").write_text("", encoding="utf-8")
    (corpus / ".c.parquet").write_bytes(b"half")
    output = corpus / "vectors"  # inside the input folder: its files are outputs, not inputs
    output.mkdir()
    (output / f"{PARTIAL_PREFIX}a.parquet").write_bytes(b"half")
    for given in (str(corpus), f"{corpus}/"):
        todo, done = plan_shards(given, output, "text", "embedding", "tiny")
        assert [(shard.source, shard.target.name, shard.rows) for shard in todo] == [
            (corpus / "2024" / "b.jsonl", "b.parquet", 1), (corpus / "a.parquet", "a.parquet", 2)
        ]
        assert done == []
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no data", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"the folder .*empty holds no \.parquet or \.jsonl files"):
        plan_shards(str(empty), tmp_path / "out", "text", "embedding", "tiny")
