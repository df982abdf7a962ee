"""Teacher distillation on tiny models: cached teacher vectors, each loss falling, a pool, prompts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

import bellm_st
from bellm_st.training import Recipe, train
from bellm_st.training import teacher as teacher_module
from bellm_st.training.distillation import TEACHER_KEY, TeacherDistillation, WithTeacherVectors, similarity_kl, split_teacher_features
from bellm_st.training.pool import build_pool, query_passage_pairs, read_pool_file
from bellm_st.training.teacher import TeacherVectors, load_teacher
from bellm_st.testing import tiny_backbone
from tests.training.test_train import TRIPLETS, data_dir, tiny_recipe  # noqa: F401 - data_dir is a fixture

POOL_TEXTS = [f"Pool sentence number {i} about {topic}." for i, topic in enumerate(["frogs", "guitars", "stocks", "parks"] * 4)]


@pytest.fixture(scope="module")
def wide_teacher_dir(tiny_tokenizer, tmp_path_factory) -> str:
    """A teacher of another size than the 32-d student: a tiny 48-d BeLLM model, saved."""
    base = tmp_path_factory.mktemp("wide-base")
    tiny_backbone("llama", hidden_size=48, seed=3).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    folder = tmp_path_factory.mktemp("wide-teacher")
    bellm_st.build(str(base), bidirectional_layers=2, pooling="mean", device="cpu").save(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def same_size_teacher_dir(tiny_model_dir, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("same-teacher")
    bellm_st.build(tiny_model_dir, bidirectional_layers=4, pooling="mean", device="cpu").save(str(folder))
    return str(folder)


@pytest.fixture()
def pool_data(data_dir):
    (data_dir / "pool.txt").write_text("\n".join(POOL_TEXTS) + "\n\n", encoding="utf-8")
    rows = ["sentence1\tsentence2\tlabel"] + [f"{a}\t{p}\t1" for a, p, _ in TRIPLETS]
    (data_dir / "paraphrases.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return data_dir


@pytest.fixture()
def encode_calls(monkeypatch):
    """Every text the teachers encode, in order (each entry is one ensure() call's new texts)."""
    calls: list[int] = []
    original = TeacherVectors.ensure

    def counting(self, texts, batch_size=teacher_module.TEACHER_BATCH_SIZE):
        computed = original(self, texts, batch_size)
        calls.append(computed)
        return computed

    monkeypatch.setattr(TeacherVectors, "ensure", counting)
    return calls


def distill_recipe(base: str, teacher: str, cache: Path, **changes) -> Recipe:
    settings = dict(distill_teacher=teacher, distill_pool=["pool.txt"], distill_cache=str(cache), max_steps=8, save_steps=8)
    settings.update(changes)
    return tiny_recipe(base, **settings)


def logged(output_dir: Path, part: str) -> list[float]:
    checkpoint = max((output_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry[part] for entry in state["log_history"] if part in entry]


def test_teacher_vectors_are_computed_once_then_read_from_disk(wide_teacher_dir, tmp_path):
    teacher = load_teacher(wide_teacher_dir, "cpu")
    calls = []
    original = teacher.encode
    teacher.encode = lambda texts, **kwargs: (calls.append(len(texts)), original(texts, **kwargs))[1]
    cache = TeacherVectors(teacher, "wide", tmp_path / "cache")
    assert cache.ensure(POOL_TEXTS + POOL_TEXTS[:3]) == len(POOL_TEXTS)  # duplicates encoded once
    assert cache.ensure(POOL_TEXTS) == 0 and calls == [len(POOL_TEXTS)]

    again = TeacherVectors(teacher, "wide", tmp_path / "cache")  # a later run: everything from disk
    assert len(again) == len(POOL_TEXTS) and again.ensure(POOL_TEXTS[::-1]) == 0 and calls == [len(POOL_TEXTS)]
    expected = original(POOL_TEXTS[:5], convert_to_tensor=True)
    torch.testing.assert_close(again.lookup(POOL_TEXTS[:5]), expected, atol=2e-2, rtol=1e-2)  # stored in fp16
    assert again.lookup(POOL_TEXTS[:5]).shape == (5, 48)
    with pytest.raises(KeyError, match="no vector for 'never seen'"):
        again.lookup(["never seen"])


def test_a_cache_folder_of_another_teacher_is_refused_and_left_alone(wide_teacher_dir, same_size_teacher_dir, tmp_path):
    TeacherVectors(load_teacher(wide_teacher_dir, "cpu"), "wide", tmp_path / "cache").ensure(POOL_TEXTS[:4])
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    with pytest.raises(ValueError, match=r"holds the vectors of another teacher \('wide'.*48-d\), not of 'same'.*32-d"):
        TeacherVectors(load_teacher(same_size_teacher_dir, "cpu"), "same", tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before


def test_teacher_vectors_travel_in_the_features_and_are_split_off(tiny_model, wide_teacher_dir, tmp_path):
    cache = TeacherVectors(load_teacher(wide_teacher_dir, "cpu"), "wide", tmp_path / "cache")
    cache.ensure(["A man plays a guitar.", "Hi"])
    features = WithTeacherVectors(tiny_model.preprocess, cache)(["A man plays a guitar.", "Hi"], prompt=None, task=None)
    (student,), (teacher,) = split_teacher_features([features])
    assert TEACHER_KEY not in student and "input_ids" in student
    torch.testing.assert_close(teacher, cache.lookup(["A man plays a guitar.", "Hi"]))


def test_kl_is_zero_for_the_teachers_own_similarities_and_masks_self_pairs():
    vectors = [torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)]
    assert similarity_kl(vectors, vectors, 20.0).item() == pytest.approx(0.0, abs=1e-6)
    assert similarity_kl([torch.randn(6, 4)], vectors, 20.0).item() > 0  # any size of student
    two_columns = [torch.randn(4, 8), torch.randn(4, 8)]
    assert torch.isfinite(similarity_kl(two_columns, two_columns[::-1], 20.0))


@pytest.mark.parametrize(
    ("distill_loss", "teacher"),
    [("kl", "wide"), ("similarity", "wide"), ("projection", "wide"), ("cosine", "same")],
)
def test_each_distillation_loss_falls_on_the_pool(
    tiny_model_dir, wide_teacher_dir, same_size_teacher_dir, pool_data, tmp_path, distill_loss, teacher
):
    # The pool task alone (the labelled file's batches are its weight's problem): every step learns from the teacher.
    recipe = distill_recipe(
        tiny_model_dir, wide_teacher_dir if teacher == "wide" else same_size_teacher_dir, tmp_path / "cache",
        distill_loss=distill_loss, train_data=[{"path": "triplets.tsv", "max_rows": 1}], pooling="mean", mixture="round_robin",
        learning_rate=1e-2, distill_pool_weight=10.0,
    )
    train(recipe, tmp_path / "out", data_dir=pool_data, device="cpu")
    losses = logged(tmp_path / "out", "distill")
    assert len(losses) >= 4 and min(losses[-2:]) < 0.7 * losses[0], losses


def test_a_distillation_run_records_its_teacher_and_pool_and_resumes_from_the_cache(
    tiny_model_dir, wide_teacher_dir, pool_data, tmp_path, encode_calls
):
    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    recipe = distill_recipe(tiny_model_dir, wide_teacher_dir, tmp_path / "cache", max_steps=4, save_steps=2, distill_weight=0.5)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "out", data_dir=pool_data, device="cpu", callbacks=[StopAt()])
    texts = {*POOL_TEXTS, *(text for row in TRIPLETS for text in row)}
    assert encode_calls == [len(texts)]  # every text of the run, once

    result = train(recipe, tmp_path / "out", data_dir=pool_data, device="cpu", resume=True)
    assert encode_calls == [len(texts), 0]  # the resumed run reads every vector back
    assert result.global_step == 4 and result.data_rows["distill_pool"] == len(texts)
    saved = Recipe.load(tmp_path / "out")
    assert saved.distill_teacher == wide_teacher_dir and saved.distill_pool == ["pool.txt"] and saved.distill_weight == 0.5
    assert "distill_pool" in (tmp_path / "out" / "README.md").read_text()
    assert logged(tmp_path / "out", "distill")  # the teacher's part was logged


def test_query_and_document_prompts_reach_their_sides(tiny_model_dir, wide_teacher_dir, pool_data, tmp_path, monkeypatch):
    from bellm_st.module import BeLLMEncoder

    seen: dict[str, set[str | None]] = {}
    original = BeLLMEncoder.preprocess

    def recording(self, inputs, prompt=None, **kwargs):
        for text in inputs:
            seen.setdefault(text, set()).add(prompt)
        return original(self, inputs, prompt=prompt, **kwargs)

    monkeypatch.setattr(BeLLMEncoder, "preprocess", recording)
    recipe = distill_recipe(
        tiny_model_dir, wide_teacher_dir, tmp_path / "cache", distill_pool=None, distill_pairs=["paraphrases.tsv"],
        query_template="Query: {text} means", document_template="Passage: {text} means", max_steps=4, save_steps=4,
        distill_pair_sentences=2,
    )
    train(recipe, tmp_path / "out", data_dir=pool_data, device="cpu")
    pairs = query_passage_pairs(
        __import__("datasets").Dataset.from_dict({"anchor": [a for a, _, _ in TRIPLETS], "positive": [p for _, p, _ in TRIPLETS]}), 2, 42
    )
    queries = [q for q in pairs["anchor"] if "Query: {text} means" in seen.get(q, ())]
    passages = [d for d in pairs["positive"] if d in seen]
    assert queries and passages and all("Passage: {text} means" in seen[d] for d in passages)
    assert not any("Passage: {text} means" in seen.get(q, ()) for q in pairs["anchor"])
    assert all(partner in passage for partner, passage in zip([p for _, p, _ in TRIPLETS], pairs["positive"]))
    model = bellm_st.load(str(tmp_path / "out"), device="cpu")
    assert model.prompts["query"] == "Query: {text} means"


def test_a_pool_takes_corpora_columns_and_text_files(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "1", "title": "Frogs", "text": "A new frog."}\n{"_id": "2", "text": "Stocks fell."}\n', encoding="utf-8"
    )
    (tmp_path / "notes.tsv").write_text("id\tbody\n1\tFirst note.\n2\tA new frog.\n", encoding="utf-8")
    assert read_pool_file(tmp_path / "corpus.jsonl") == ["Frogs A new frog.", "Stocks fell."]
    assert read_pool_file(tmp_path / "notes.tsv", "body") == ["First note.", "A new frog."]
    pool = build_pool([], [(tmp_path / "notes.tsv", "body"), (tmp_path / "notes.tsv", "body")], seed=1)
    assert sorted(pool["text"]) == ["A new frog.", "First note."]  # deduplicated


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"distill_teacher": "no-such-teacher"}, r"distill_teacher='no-such-teacher' cannot be loaded"),
        ({"distill_pool": ["notes.tsv:summary"]}, r"notes.tsv, line 1: no column 'summary'; the file has id, body"),
        ({"distill_pool": ["notes.tsv"]}, r"no column 'text'.*PATH:COLUMN"),
        ({"distill_pairs": ["paraphrases.tsv"], "distill_pool": None}, r"asks for the 'query' prompt"),
    ],
)
def test_bad_distillation_input_fails_in_one_line_before_anything_is_written(
    tiny_model_dir, wide_teacher_dir, pool_data, tmp_path, changes, message
):
    (pool_data / "notes.tsv").write_text("id\tbody\n1\tFirst note.\n", encoding="utf-8")
    recipe = distill_recipe(tiny_model_dir, wide_teacher_dir, tmp_path / "cache", **changes)
    with pytest.raises(ValueError, match=message) as error:
        train(recipe, tmp_path / "out", data_dir=pool_data, device="cpu")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_an_empty_pool_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the distillation pool is empty"):
        build_pool([], [(tmp_path / "empty.txt", None)], seed=0)


def test_embedding_losses_need_vectors_of_one_size(tiny_model):
    with pytest.raises(ValueError, match="48-d vectors and the student 32-d; use distill_loss='kl'"):
        TeacherDistillation(tiny_model, 48, 1.0, "cosine")
    TeacherDistillation(tiny_model, 48, 1.0, "kl")  # any size


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keep_layers": 0}, r"keep_layers=0 must keep at least one layer"),
        ({"keep_layers": 10, "bidirectional_layers": 16}, r"bidirectional_layers=16 but keep_layers=10 leaves 10 layers; use 0\.\.10"),
        ({"distill_teacher": "minilm"}, r"distill_weight=0 and there is no distill_pool or distill_pairs"),
        ({"distill_weight": -1.0}, r"distill_weight=-1.0 must be >= 0"),
        ({"distill_loss": "kld"}, r"distill_loss='kld'; use one of kl, similarity, projection"),
        ({"distill_pool": [], "distill_pool_weight": 0.0}, r"distill_pool_weight=0.0 must be > 0"),
        ({"distill_pool": [""]}, r"must be a list of files"),
    ],
)
def test_recipe_refuses_bad_pruning_and_distillation_values(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**changes)


def test_keep_layers_beyond_the_model_fails_before_training(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"keep_layers=40 but the model has 4 layers; use 1\.\.4"):
        train(tiny_recipe(tiny_model_dir, keep_layers=40), tmp_path / "out", data_dir=data_dir, device="cpu")


def test_cli_train_with_a_teacher_and_a_bad_teacher(tiny_model_dir, wide_teacher_dir, pool_data, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    recipe = tiny_recipe(tiny_model_dir, max_steps=2, save_steps=2).save(tmp_path)
    arguments = ["train", "--recipe", str(recipe), "--data-dir", str(pool_data), "-o", str(tmp_path / "out"),
                 "--distill-pool", "pool.txt", "--distill-cache", str(tmp_path / "cache"), "--device", "cpu"]
    result = CliRunner().invoke(app, [*arguments, "--distill-teacher", wide_teacher_dir, "--keep-layers", "3", "-k", "1"])
    assert result.exit_code == 0, result.output
    saved = Recipe.load(tmp_path / "out")
    assert saved.distill_pool == ["pool.txt"] and saved.keep_layers == 3 and saved.distill_teacher == wide_teacher_dir
    bad = CliRunner().invoke(app, [*arguments[:6], str(tmp_path / "out2"), *arguments[7:], "--distill-teacher", "nope"])
    assert bad.exit_code == 2 and "distill_teacher='nope' cannot be loaded" in " ".join(bad.output.split())
    assert not (tmp_path / "out2").exists()


def test_a_trained_student_loads_as_a_plain_sentence_transformer(tiny_model_dir, wide_teacher_dir, pool_data, tmp_path):
    recipe = distill_recipe(tiny_model_dir, wide_teacher_dir, tmp_path / "cache", distill_loss="projection", max_steps=2, save_steps=2)
    train(recipe, tmp_path / "out", data_dir=pool_data, device="cpu")
    loaded = SentenceTransformer(str(tmp_path / "out"), trust_remote_code=True, device="cpu")
    assert loaded.encode(["A frog."]).shape == (1, 32)  # the projection stayed with the loss
