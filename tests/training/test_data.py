"""Training data formats: detection, conversion to the objective's columns, and errors naming file and line."""

from __future__ import annotations

import json

import pytest

from bellm_st.tabular import DataFileError
from bellm_st.training.data import load_source
from bellm_st.training.recipe import DataSource, Recipe


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def load(path, data_format="auto", max_rows=None):
    return load_source(DataSource(str(path), data_format, max_rows), path, seed=0)


def test_nli_triplets_keep_quotes_because_tsv_is_unquoted(tmp_path):
    path = write(tmp_path / "t.tsv", 'source\tsplit\tpremise\tentailment\tcontradiction\ns\tdev\tHe said "hi.\tHe spoke.\tHe was silent.\n')
    dataset = load(path)
    assert dataset.column_names == ["anchor", "positive", "negative"]
    assert dataset[0] == {"anchor": 'He said "hi.', "positive": "He spoke.", "negative": "He was silent."}


def test_nli_pairs_are_grouped_per_premise_into_triplets(tmp_path):
    rows = [
        ("P1", "e1", "entailment"), ("P1", "n1", "neutral"), ("P1", "c1", "contradiction"), ("P1", "e2", "entailment"),
        ("P2", "e3", "entailment"),  # no contradiction: no hard negative, dropped
    ]
    text = "source\tsplit\tpremise\thypothesis\tlabel\n" + "".join(f"s\tdev\t{p}\t{h}\t{l}\n" for p, h, l in rows)
    dataset = load(write(tmp_path / "pairs.tsv", text))
    assert dataset.to_dict() == {"anchor": ["P1", "P1"], "positive": ["e1", "e2"], "negative": ["c1", "c1"]}


def test_paraphrase_pairs_keep_positive_pairs_only(tmp_path):
    dataset = load(write(tmp_path / "p.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t0\ne\tf\t1\n"))
    assert dataset.to_dict() == {"anchor": ["a", "e"], "positive": ["b", "f"]}


def test_scored_pairs_with_a_subset_column(tmp_path):
    dataset = load(write(tmp_path / "s.tsv", "subset\tscore\tsentence1\tsentence2\nx\t4.5\ta\tb\ny\t1\tc\td\n"))
    assert dataset.to_dict() == {"sentence1": ["a", "c"], "sentence2": ["b", "d"], "score": [4.5, 1.0]}


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "tsv"])
def test_allnli_layout_in_every_file_type(tmp_path, suffix):
    rows = [{"anchor": "A, with a comma", "positive": "B", "negative": "C"}, {"anchor": "D", "positive": "E", "negative": "F"}]
    if suffix == "jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif suffix == "csv":
        text = "anchor,positive,negative\n" + "".join(f'"{r["anchor"]}",{r["positive"]},{r["negative"]}\n' for r in rows)
    else:
        text = "anchor\tpositive\tnegative\n" + "".join(f'{r["anchor"]}\t{r["positive"]}\t{r["negative"]}\n' for r in rows)
    dataset = load(write(tmp_path / f"all-nli.{suffix}", text))
    assert dataset.to_list() == rows


def test_max_rows_is_a_seeded_sample(tmp_path):
    text = "sentence1\tsentence2\tlabel\n" + "".join(f"a{i}\tb{i}\t1\n" for i in range(50))
    path = write(tmp_path / "p.tsv", text)
    first, second = load(path, max_rows=10), load(path, max_rows=10)
    assert len(first) == 10 and first.to_dict() == second.to_dict()
    assert first["anchor"] != [f"a{i}" for i in range(10)]  # not just the head of the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sentence1\tsentence2\tlabel\na\tb\t1\nc\td\tyes\n", r"p\.tsv, line 3: label 'yes'"),
        ("score\tsentence1\tsentence2\n1.0\ta\tb\nhigh\tc\td\n", r"p\.tsv, line 3: column 'score' must be a number, got 'high'"),
        ("anchor\tpositive\na\tb\tc\n", r"p\.tsv, line 2: expected 2 fields"),
        ("question\tanswer\na\tb\n", r"p\.tsv, line 1: cannot tell the data format"),
        ("anchor,positive,negative\na,b,c\n", r"p\.tsv, line 1: the header has a single column.*separated by commas"),
        ("", r"p\.tsv: the file is empty"),
    ],
)
def test_bad_training_data_names_file_and_line(tmp_path, text, message):
    with pytest.raises(DataFileError, match=message):
        load(write(tmp_path / "p.tsv", text))


def test_a_triplets_file_whose_only_row_is_blank_is_a_data_error(tmp_path):
    """Was a StopIteration from deep inside the reader."""
    with pytest.raises(DataFileError, match=r"p\.tsv: no usable triplets examples"):
        load(write(tmp_path / "p.tsv", "anchor\tpositive\tnegative\n\t\t\n"))


def test_a_folder_given_as_training_data_is_a_data_error(tmp_path):
    """Was an IsADirectoryError."""
    folder = tmp_path / "nli.tsv"
    folder.mkdir()
    with pytest.raises(DataFileError, match=r"nli\.tsv: is a folder; give a \.tsv, \.csv, \.jsonl file inside it"):
        load(folder)


@pytest.mark.parametrize("suffix", ["tsv", "jsonl"])
def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path, suffix):
    rows = {"tsv": "anchor\tpositive\nfine\talso fine\ncaf\xe9\tbar\n", "jsonl": '{"anchor": "a", "positive": "b"}\n{"anchor": "caf\xe9", "positive": "b"}\n'}
    path = tmp_path / f"p.{suffix}"
    path.write_bytes(rows[suffix].encode("latin-1"))
    line = 3 if suffix == "tsv" else 2
    with pytest.raises(DataFileError, match=rf"p\.{suffix}, line {line}: byte 0xe9 is not UTF-8; re-save the file as UTF-8"):
        load(path)


@pytest.mark.parametrize("suffix", ["tsv", "csv", "jsonl"])
def test_a_byte_order_mark_before_the_header_is_accepted(tmp_path, suffix):
    text = {"tsv": "anchor\tpositive\na\tb\n", "csv": "anchor,positive\na,b\n", "jsonl": '{"anchor": "a", "positive": "b"}\n'}
    path = tmp_path / f"p.{suffix}"
    path.write_text("\ufeff" + text[suffix], encoding="utf-8")
    assert load(path)["anchor"] == ["a"]


def test_csv_line_numbers_count_the_lines_of_multi_line_quoted_fields(tmp_path):
    text = 'sentence1,sentence2,label\n"a sentence\nover two lines",b,1\nc,d,maybe\n'
    with pytest.raises(DataFileError, match=r"p\.csv, line 4: label 'maybe'"):
        load(write(tmp_path / "p.csv", text))


def test_recipe_round_trips_through_json(tmp_path):
    recipe = Recipe(train_data=["nli/pairs.tsv:nli-pairs:1000", "pairs/mrpc_train.tsv"], learning_rate=1e-4, seed=7)
    assert Recipe.load(recipe.save(tmp_path)) == recipe
    assert recipe.train_data[0] == DataSource("nli/pairs.tsv", "nli-pairs", 1000)
    assert DataSource.parse("pairs/mrpc_train.tsv::32") == DataSource("pairs/mrpc_train.tsv", "auto", 32)


def test_recipe_refuses_unknown_fields_and_bad_values(tmp_path):
    (tmp_path / "recipe.json").write_text('{"learning_rat": 0.1}')
    with pytest.raises(ValueError, match="unknown recipe field.*learning_rat"):
        Recipe.load(tmp_path)
    with pytest.raises(ValueError, match="cannot read the data spec 'x.tsv:tsv'"):
        Recipe(train_data=["x.tsv:tsv"])
    with pytest.raises(ValueError, match="data format 'tsv' is not known"):
        Recipe(train_data=[{"path": "x.tsv", "format": "tsv"}])
