"""`bellm-st adapt` on tiny random models: a BeLLM model (LoRA, query/document prompts) and a plain
sentence-transformers model (full fine-tune), from Python and the CLI; bad input leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from typer.testing import CliRunner

import bellm_st
from bellm_st.cli import app
from bellm_st.prompts import DEFAULT_QUERY_TEMPLATE, DEFAULT_TEMPLATE
from bellm_st.training import Recipe, adapt

TOPICS = ["frogs", "markets", "guitars", "football", "onions", "rain", "stars", "trains"]


def corpus_rows(count: int = 8):
    return [
        {"_id": f"d{i}", "title": f"About {TOPICS[i % 8]} {i}",
         "text": f"Scientists studied {TOPICS[i % 8]} in place {i}. The results were clear. More work is needed."}
        for i in range(count)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", corpus_rows())


@pytest.fixture()
def data_dir(tmp_path):
    folder = tmp_path / "data"
    (folder / "nli").mkdir(parents=True)
    rows = [(f"A man plays song {i}.", f"Someone plays music {i}.", f"Stocks fell {i}.") for i in range(8)]
    (folder / "nli" / "triplets.tsv").write_text(
        "premise\tentailment\tcontradiction\n" + "".join("\t".join(row) + "\n" for row in rows), encoding="utf-8"
    )
    return folder


@pytest.fixture()
def beir_folder(tmp_path, corpus):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus.read_text())
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "frogs studied"}, {"_id": "q2", "text": "markets"}])
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td1\t1\n")
    return folder


@pytest.fixture()
def tiny_bellm_dir(tmp_path, tiny_model_dir):
    folder = tmp_path / "tiny-bellm"
    bellm_st.build(tiny_model_dir, bidirectional_layers=2, device="cpu").save(str(folder))
    return str(folder)


@pytest.fixture()
def tiny_plain_dir(tmp_path, tiny_tokenizer):
    """A tiny BERT with mean pooling: a sentence-transformers model that is not BeLLM."""
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    raw = tmp_path / "tiny-bert-raw"
    BertModel(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(raw)
    tiny_tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")], device="cpu")
    folder = tmp_path / "tiny-bert"
    model.save(str(folder))
    return str(folder)


SMALL = dict(batch_size=4, max_steps=3, max_seq_length=48, device="cpu")


def test_adapt_a_bellm_model_trains_lora_and_carries_query_and_document_prompts(
    tiny_bellm_dir, corpus, data_dir, beir_folder, tmp_path
):
    out = tmp_path / "adapted"
    result = adapt(corpus, out, model=tiny_bellm_dir, data_dir=data_dir, eval_retrieval=beir_folder, eval_split="train",
                   eval_steps=2, **SMALL)
    assert result.global_step == 3
    assert result.data_rows == {str((out / "weak_pairs.jsonl").resolve()): 16, "nli/triplets.tsv": 8}  # 8 title + 8 ict; ratio 0.5

    model = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert hasattr(model[0].auto_model, "peft_config")  # a new LoRA adapter on the merged weights
    assert model.prompts["query"] == DEFAULT_QUERY_TEMPLATE and model.prompts["document"] == DEFAULT_TEMPLATE
    recipe = Recipe.load(out)
    assert recipe.init_model == str(tmp_path / "tiny-bellm") and recipe.learning_rate == 2e-4
    assert recipe.bidirectional_layers == 2 != Recipe.bidirectional_layers  # the adapted model's, not a default
    assert recipe.train_data[0].prompts == {"anchor": "query", "positive": "document"}
    assert (recipe.train_data[0].loss, recipe.train_data[1].loss) == ("contrastive", "bellm")

    pairs = [json.loads(line) for line in (out / "weak_pairs.jsonl").read_text().splitlines()]
    assert {pair["kind"] for pair in pairs} == {"title", "ict"} and len(pairs) == 16
    history = json.loads((out / "eval_history.json").read_text())
    assert [entry["step"] for entry in history] == [0, 2, 3]  # before training, every eval step, the end
    assert all("cosine_ndcg@10" in entry for entry in history)
    card = (out / "README.md").read_text()
    assert "Adapted without labels to" in card and "8 title, 8 ict" in card


def test_the_adapted_prompts_reach_queries_and_documents(tiny_bellm_dir, corpus, data_dir, tmp_path):
    """encode_query/encode_document use the saved prompts without being told (the integrations' own
    tests check that LangChain and LlamaIndex use a model's prompts the same way)."""
    adapt(corpus, tmp_path / "adapted", model=tiny_bellm_dir, data_dir=data_dir, general_ratio=0, **SMALL)
    model = SentenceTransformer(str(tmp_path / "adapted"), trust_remote_code=True, device="cpu")
    texts = ["frogs in the rain", "a market report"]
    query = model.encode(texts, prompt=DEFAULT_QUERY_TEMPLATE, normalize_embeddings=True)
    document = model.encode(texts, prompt=DEFAULT_TEMPLATE, normalize_embeddings=True)
    assert not np.allclose(query, document, atol=1e-4)
    np.testing.assert_allclose(model.encode_query(texts, normalize_embeddings=True), query, atol=1e-6)
    np.testing.assert_allclose(model.encode_document(texts, normalize_embeddings=True), document, atol=1e-6)


def test_adapt_a_plain_sentence_transformers_model_from_the_cli(tiny_plain_dir, corpus, data_dir, tmp_path):
    out = tmp_path / "adapted-plain"
    before = SentenceTransformer(tiny_plain_dir, device="cpu")
    result = CliRunner().invoke(app, [
        "adapt", "--corpus", str(corpus), "-m", tiny_plain_dir, "-o", str(out), "--data-dir", str(data_dir),
        "--batch-size", "4", "--max-steps", "3", "--max-seq-length", "48", "--device", "cpu", "--ict-per-document", "2",
    ])
    assert result.exit_code == 0, result.output
    kinds = [json.loads(line)["kind"] for line in (out / "weak_pairs.jsonl").read_text().splitlines()]
    assert kinds.count("ict") == 2 * 8 and kinds.count("title") == 8  # two sentences of each three-sentence document
    after = SentenceTransformer(str(out), device="cpu")
    assert not any(after.prompts.values())  # a plain model gets no prompts unless given
    assert after.max_seq_length == before.max_seq_length == 128  # its own budget is kept
    recipe = Recipe.load(out)
    assert recipe.learning_rate == 2e-5 and recipe.angle_weight == 0.0  # full fine-tune, in-batch contrastive
    assert [source.loss for source in recipe.train_data] == ["contrastive", "contrastive"]
    changed = [name for name, value in after.state_dict().items() if not torch.equal(value, before.state_dict()[name])]
    assert len(changed) > 10  # every weight trains, not an adapter


def test_a_full_template_on_a_plain_model_is_refused(tiny_plain_dir, corpus, data_dir, tmp_path):
    with pytest.raises(ValueError, match="not a BeLLM encoder"):
        adapt(corpus, tmp_path / "out", model=tiny_plain_dir, data_dir=data_dir, query_template="Q {text}", **SMALL)


@pytest.mark.parametrize(
    "rows, options, message",
    [
        ([], {}, "the file is empty"),
        ([{"_id": "a", "title": "t"}], {}, 'no document has a "text"'),
        (corpus_rows(2), {}, r"2 document\(s\) gave 4 weak pair\(s\) \(2 title, 2 ict\), fewer than batch_size=8"),
        ([{"_id": "a", "text": "x"}, {"text": "y"}], {}, 'line 2: the document has no "_id"'),
        (corpus_rows(), {"general_data": "missing.tsv"}, "missing.tsv: no such file"),
        (corpus_rows(), {"general_ratio": -1}, "general_ratio=-1"),
        (corpus_rows(), {"kinds": ("title", "cloze")}, "cloze unknown"),
        (corpus_rows(), {"ict_per_document": 0}, "ict_per_document=0 must be at least 1"),
        (corpus_rows(), {"lora_r": 0}, "lora_r=0 must be at least 1"),
        (corpus_rows(), {"teacher": "no-such-teacher"}, "distill_teacher='no-such-teacher' cannot be loaded"),
        (corpus_rows(), {"teacher": "minilm", "teacher_weight": 0}, "teacher_weight=0 must be > 0"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tiny_bellm_dir, data_dir, tmp_path, rows, options, message):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = {**SMALL, "batch_size": 8, **options}
    with pytest.raises(ValueError, match=message):
        adapt(corpus, tmp_path / "out", model=tiny_bellm_dir, data_dir=data_dir, **settings)
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_corpus_with_file_and_line(tiny_bellm_dir, data_dir, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    result = CliRunner().invoke(app, ["adapt", "--corpus", str(corpus), "-m", tiny_bellm_dir, "-o", str(tmp_path / "out"),
                                      "--data-dir", str(data_dir), "--device", "cpu"])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "corpus.jsonl, line 2: _id 'a' was already used on line 1" in output
    assert not (tmp_path / "out").exists()


def test_adapt_prunes_a_bellm_model_and_refuses_to_prune_a_plain_one(
    tiny_bellm_dir, tiny_plain_dir, corpus, data_dir, tmp_path
):
    out = tmp_path / "pruned"
    adapt(corpus, out, model=tiny_bellm_dir, data_dir=data_dir, keep_layers=3, **SMALL)
    model = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert model[0].decoder.config.num_hidden_layers == 3 and model[0].bidirectional_layer_indices == (1, 2)
    assert Recipe.load(out).keep_layers == 3
    with pytest.raises(ValueError, match="keep_layers=3 prunes BeLLM models"):
        adapt(corpus, tmp_path / "plain", model=tiny_plain_dir, data_dir=data_dir, keep_layers=3, **SMALL)
    assert not (tmp_path / "plain").exists()


def test_adapting_a_bellm_model_off_a_cuda_gpu_checkpoints_activations_unless_told_not_to(
    tiny_bellm_dir, corpus, data_dir, tmp_path
):
    adapt(corpus, tmp_path / "auto", model=tiny_bellm_dir, data_dir=data_dir, general_ratio=0, **SMALL)
    assert Recipe.load(tmp_path / "auto").gradient_checkpointing  # device="cpu": memory is what runs out
    adapt(corpus, tmp_path / "off", model=tiny_bellm_dir, data_dir=data_dir, general_ratio=0,
          gradient_checkpointing=False, **SMALL)
    assert not Recipe.load(tmp_path / "off").gradient_checkpointing
    # Checkpointing recomputes the same forward pass: both runs end with the same adapter.
    on = SentenceTransformer(str(tmp_path / "auto"), trust_remote_code=True, device="cpu")
    off = SentenceTransformer(str(tmp_path / "off"), trust_remote_code=True, device="cpu")
    texts = ["frogs in the rain", "a market report"]
    np.testing.assert_allclose(on.encode(texts), off.encode(texts), atol=1e-5)


def test_a_plain_model_is_never_checkpointed_by_default(tiny_plain_dir, corpus, data_dir, tmp_path):
    adapt(corpus, tmp_path / "plain", model=tiny_plain_dir, data_dir=data_dir, general_ratio=0, **SMALL)
    assert not Recipe.load(tmp_path / "plain").gradient_checkpointing


def test_adapt_sizes_the_new_adapter_and_refuses_a_rank_for_a_plain_model(
    tiny_bellm_dir, tiny_plain_dir, corpus, data_dir, tmp_path
):
    out = tmp_path / "rank4"
    adapt(corpus, out, model=tiny_bellm_dir, data_dir=data_dir, lora_r=4, **SMALL)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)  # alpha follows at twice the rank
    recipe = Recipe.load(out)
    assert (recipe.lora_r, recipe.lora_alpha) == (4, 8)
    with pytest.raises(ValueError, match="lora_r=4 sizes a BeLLM model's adapter"):
        adapt(corpus, tmp_path / "plain", model=tiny_plain_dir, data_dir=data_dir, lora_r=4, **SMALL)
    assert not (tmp_path / "plain").exists()


def model_of(folder):
    return SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")


def test_adapt_with_a_teacher_mines_negatives_and_learns_its_margins(tiny_bellm_dir, tiny_plain_dir, corpus, data_dir, tmp_path):
    """The teacher (here a tiny BERT of another kind) ranks the corpus for each query: the negative is never the
    query's own document, the margin part is logged, and the recipe records the teacher."""
    out = tmp_path / "adapted"
    result = adapt(corpus, out, model=tiny_bellm_dir, data_dir=data_dir, teacher=tiny_plain_dir,
                   teacher_cache=tmp_path / "cache", **{**SMALL, "max_steps": 4})
    assert result.global_step == 4
    pairs = [json.loads(line) for line in (out / "weak_pairs.jsonl").read_text().splitlines()]
    everywhere = {pair["anchor"] for pair in pairs if all(pair["anchor"] in row["text"] for row in corpus_rows())}
    assert len(pairs) == 16 and all(pair["anchor"] not in pair["negative"] for pair in pairs if pair["anchor"] not in everywhere)
    assert all(pair["negative"] != pair["positive"] for pair in pairs)
    recipe = Recipe.load(out)
    assert (recipe.distill_teacher, recipe.distill_loss, recipe.distill_weight) == (str(tmp_path / "tiny-bert"), "margin", 1.0)
    assert recipe.train_data[0].prompts == {"anchor": "query", "positive": "document", "negative": "document"}
    from bellm_st.training.tasks import task_loss

    weak_loss = task_loss(model_of(out), recipe, recipe.train_data[0], teacher_dimension=32)
    assert weak_loss.distillation.loss == "margin" and weak_loss.weights["contrastive"] == 1.0
    assert "Teacher `" in (out / "README.md").read_text()
    assert list((tmp_path / "cache").glob("vectors-*.safetensors"))  # computed once, kept for the next run
