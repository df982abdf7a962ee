"""Weak query -> passage pairs from a corpus alone: each kind, seeded and deterministic, and bad corpora."""

from __future__ import annotations

import json
import logging

import pytest

from bellm_st.tabular import DataFileError
from bellm_st.training.weak_pairs import (
    Document,
    build_weak_pairs,
    generate_queries,
    inverse_cloze_pairs,
    read_corpus,
    split_sentences,
    title_pairs,
)

DOCUMENTS = [
    {"_id": "d1", "title": "Frogs", "text": "A new frog was found. It lives in trees. It is green."},
    {"_id": "d2", "text": "Markets fell today. Investors were worried."},  # no title field
    {"_id": "d3", "title": "Guitars", "text": "A short text without a second sentence"},
]


def write_corpus(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_corpus_rows_without_a_title_have_an_empty_one(tmp_path):
    documents = read_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCUMENTS))
    assert [(d.id, d.title, d.line) for d in documents] == [("d1", "Frogs", 1), ("d2", "", 2), ("d3", "Guitars", 3)]
    assert documents[1].passage == "Markets fell today. Investors were worried."


def test_title_pairs_skip_documents_without_a_title(tmp_path):
    documents = read_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCUMENTS))
    assert title_pairs(documents) == [("Frogs", DOCUMENTS[0]["text"]), ("Guitars", DOCUMENTS[2]["text"])]


def test_inverse_cloze_takes_one_sentence_out_seeded_and_deterministic(tmp_path):
    documents = read_corpus(write_corpus(tmp_path / "corpus.jsonl", DOCUMENTS))
    pairs = inverse_cloze_pairs(documents, seed=0)
    assert pairs == inverse_cloze_pairs(documents, seed=0)
    assert len(pairs) == 2  # d3 has one sentence
    for (sentence, passage), document in zip(pairs, documents[:2]):
        assert sentence in split_sentences(document.text) and sentence not in passage
        assert passage.startswith(document.title)
        assert sorted(split_sentences(document.text)) == sorted([sentence, *split_sentences(passage.removeprefix(document.title).strip())])
    many = [Document(str(i), "", "One. Two. Three. Four. Five.", i) for i in range(20)]
    assert inverse_cloze_pairs(many, seed=1) != inverse_cloze_pairs(many, seed=2)


def test_inverse_cloze_per_document_takes_different_sentences_and_at_most_all(tmp_path):
    documents = [Document("a", "T", "One. Two. Three. Four. Five.", 1), Document("b", "", "Six. Seven.", 2)]
    pairs = inverse_cloze_pairs(documents, seed=3, per_document=3)
    assert len(pairs) == 3 + 2  # the two-sentence document gives both of its sentences, no more
    queries_of_a = [query for query, _ in pairs[:3]]
    assert len(set(queries_of_a)) == 3 and set(queries_of_a) <= set(split_sentences(documents[0].text))
    for query, passage in pairs:
        assert query not in passage
    assert [query for query, _ in pairs[3:]] in (["Six.", "Seven."], ["Seven.", "Six."])
    assert inverse_cloze_pairs(documents, seed=3, per_document=3) == pairs
    with pytest.raises(ValueError, match="ict_per_document=0 must be at least 1"):
        inverse_cloze_pairs(documents, seed=3, per_document=0)


def test_generated_queries_come_from_a_decoder_one_per_passage(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from bellm_st.testing import tiny_config

    folder = tmp_path / "generator"
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    passages = ["A new frog was found.", "Markets fell today.", "Children play football."]
    queries = generate_queries(passages, str(folder), max_new_tokens=4, batch_size=2, device="cpu")
    assert len(queries) == 3 and all(isinstance(query, str) for query in queries)
    assert queries == generate_queries(passages, str(folder), max_new_tokens=4, batch_size=2, device="cpu")
    pairs = build_weak_pairs([Document("d", "", passages[0], 1)], ["generated"], generator=str(folder), device="cpu")
    assert [passage for _, passage in pairs["generated"]] in ([passages[0]], [])


def test_unknown_kind_and_generation_without_a_model_are_refused():
    with pytest.raises(ValueError, match="unknown; use title, ict, generated"):
        build_weak_pairs([], ["titles"])
    with pytest.raises(ValueError, match="--generated-queries"):
        build_weak_pairs([], ["generated"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ('{"_id": "a", "text": "x"}\n{"text": "no id"}\n', 'line 2: the document has no "_id"'),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "line 2: _id 'a' was already used on line 1"),
        ('{"_id": "a", "text": ""}\n{"_id": "b", "title": "only a title"}\n', 'no document has a "text"'),
        ('{"_id": "a", "text": "x"}\nnot json\n', "line 2: not valid JSON"),
    ],
)
def test_bad_corpora_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=message) as error:
        read_corpus(path)
    assert str(path) in str(error.value)


def test_documents_without_text_are_skipped_with_a_warning_naming_their_lines(tmp_path, caplog):
    path = write_corpus(tmp_path / "corpus.jsonl", [*DOCUMENTS, {"_id": "d4", "title": "Empty", "text": " "}])
    with caplog.at_level(logging.WARNING):
        documents = read_corpus(path)
    assert [d.id for d in documents] == ["d1", "d2", "d3"]
    assert "skipped 1 document(s) without a text (lines 4)" in caplog.text


def test_a_corpus_must_be_jsonl(tmp_path):
    path = tmp_path / "corpus.tsv"
    path.write_text("_id\ttext\na\tb\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="BEIR's JSONL"):
        read_corpus(path)
