"""End-to-end training on a tiny random decoder: the loss falls, checkpoints resume the same run."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers import SentenceTransformerTrainer
from transformers import TrainerCallback
from transformers.trainer_callback import TrainerState
from typer.testing import CliRunner

from bellm_st.cli import app
from bellm_st.module import BeLLMEncoder
from bellm_st.training import Recipe, train

TRIPLETS = [
    ("A man plays a guitar.", "Someone plays music.", "Stocks fell today."),
    ("A woman slices an onion.", "Someone is cooking.", "Children play football."),
    ("The market fell sharply.", "Stocks dropped.", "A frog was discovered."),
    ("Kids play in the park.", "Children are outside.", "A man is sleeping."),
    ("A new frog species.", "Scientists found a frog.", "The guitar is broken."),
    ("A dog runs on grass.", "An animal is running.", "A cat sleeps inside."),
    ("Two men ride bikes.", "People are cycling.", "Nobody is moving."),
    ("A girl reads a book.", "Someone is reading.", "A girl is swimming."),
]


@pytest.fixture()
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = ["anchor\tpositive\tnegative"] + ["\t".join(row) for row in TRIPLETS]
    (folder / "triplets.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    scored = ["score\tsentence1\tsentence2"] + [f"{5 - i % 5}\t{a}\t{p if i % 2 else n}" for i, (a, p, n) in enumerate(TRIPLETS)]
    (folder / "dev.tsv").write_text("\n".join(scored) + "\n", encoding="utf-8")
    return folder


def tiny_recipe(base: str, **changes) -> Recipe:
    settings = dict(
        base=base, train_data=["triplets.tsv"], dev_data=[], batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
        max_steps=6, save_steps=3, logging_steps=1, train_max_seq_length=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
        batch_sampler="batch_sampler", bidirectional_layers=2, pooling="last",
    )
    settings.update(changes)
    return Recipe(**settings)


def logged_losses(checkpoint: Path) -> list[float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_training_lowers_the_loss_and_saves_model_recipe_card_and_scores(tiny_model_dir, data_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, dev_data=["dev.tsv"], eval_steps=3)
    result = train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")

    losses = logged_losses(tmp_path / "out" / "checkpoints" / "checkpoint-6")
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0]  # the same 8 triplets every step: the loss must fall
    assert result.global_step == 6 and result.data_rows == {"triplets.tsv": 8}
    out = tmp_path / "out"
    assert Recipe.load(out) == recipe.with_changes(data_dir=str(data_dir))
    assert set(json.loads((out / "dev_scores.json").read_text())) == {"dev", "average"}
    card = (out / "README.md").read_text()
    assert "## BeLLM training" in card and "triplets.tsv" in card and '"learning_rate": 0.005' in card
    assert json.loads((out / "bellm_config.json").read_text())["max_seq_length"] == recipe.max_seq_length

    loaded = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert loaded[0].bidirectional_layer_indices == (2, 3)
    assert hasattr(loaded[0].auto_model, "peft_config")  # the trained adapter came back


class StopAtStep(TrainerCallback):
    """Simulates a killed job: raises right after the given step (its checkpoint already written)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")
        return control


def test_resume_after_a_kill_continues_the_same_run(tiny_model_dir, data_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir)
    uninterrupted = train(recipe, tmp_path / "full", data_dir=data_dir, device="cpu")

    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "killed", data_dir=data_dir, device="cpu", callbacks=[StopAtStep(4)])
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-3"]
    saved = checkpoints / "checkpoint-3"
    assert (saved / "adapter" / "adapter_model.safetensors").exists() and (saved / "recipe.json").exists()
    assert json.loads((saved / "bellm_config.json").read_text())["bidirectional_layers"] == 2

    resumed = train(recipe, tmp_path / "killed", data_dir=data_dir, device="cpu", resume=True)
    assert resumed.global_step == uninterrupted.global_step == 6
    state = json.loads((checkpoints / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]  # 4..6 only once
    full, continued = adapter_weights(tmp_path / "full"), adapter_weights(tmp_path / "killed")
    assert full.keys() == continued.keys()
    for name in full:
        torch.testing.assert_close(continued[name], full[name], rtol=1e-4, atol=1e-6)
    assert logged_losses(checkpoints / "checkpoint-6")[3:] == pytest.approx(logged_losses(tmp_path / "full" / "checkpoints" / "checkpoint-6")[3:], rel=1e-4)


class Killed(BaseException):
    """Stands in for SIGKILL: no handler of the trainer's catches it."""


def kill_at_call(monkeypatch, owner, name: str, occurrence: int, partial_write=None) -> None:
    """Make the ``occurrence``-th call of ``owner.name`` die (optionally after writing part of its file)."""
    original, calls = getattr(owner, name), itertools.count(1)

    def dying(self, *args, **kwargs):
        if next(calls) == occurrence:
            if partial_write is not None:
                partial_write(self, *args)
            raise Killed(f"{name} #{occurrence}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, dying)


def half_a_state_file(state: TrainerState, json_path: str) -> None:
    text = json.dumps(dataclasses.asdict(state), indent=2)
    Path(json_path).write_text(text[: len(text) // 2])


class KillAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"after step {self.step}")
        return control


# Where a 6-step run (checkpoints at steps 3 and 6, then the final save) can die, and at which call:
# between steps, or inside a checkpoint write (the model files, the optimizer, a half-written trainer state).
KILL_MOMENTS = {"after step": range(1, 7), "model files": (1, 2, 3), "optimizer": (1, 2), "trainer state": (1, 2)}


def random_kill_moment(seed: int) -> tuple[str, int]:
    """Each kind of moment in turn, at a random call of it."""
    where = list(KILL_MOMENTS)[seed % len(KILL_MOMENTS)]
    return where, random.Random(seed).choice(KILL_MOMENTS[where])


def arm_kill(monkeypatch, moment: tuple[str, int]) -> list[TrainerCallback]:
    where, n = moment
    if where == "after step":
        return [KillAfterStep(n)]
    if where == "model files":  # the reported case: the checkpoint holds only config_sentence_transformers.json
        kill_at_call(monkeypatch, BeLLMEncoder, "save", n)
    elif where == "optimizer":
        kill_at_call(monkeypatch, SentenceTransformerTrainer, "_save_optimizer_and_scheduler", n)
    else:
        kill_at_call(monkeypatch, TrainerState, "save_to_json", n, partial_write=half_a_state_file)
    return []


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    data = folder / "data"
    data.mkdir()
    (data / "triplets.tsv").write_text(
        "\n".join(["anchor\tpositive\tnegative"] + ["\t".join(row) for row in TRIPLETS]) + "\n", encoding="utf-8"
    )
    recipe = tiny_recipe(tiny_model_dir)
    train(recipe, folder / "out", data_dir=data, device="cpu")
    return recipe, data, adapter_weights(folder / "out")


@pytest.mark.parametrize("seed", range(6))
def test_a_run_killed_at_a_random_moment_resumes_to_the_same_adapter(uninterrupted_run, tmp_path, monkeypatch, seed):
    recipe, data, expected = uninterrupted_run
    moment = random_kill_moment(seed)
    with monkeypatch.context() as patches, pytest.raises(Killed):
        train(recipe, tmp_path / "out", data_dir=data, device="cpu", callbacks=arm_kill(patches, moment))

    resumed = train(recipe, tmp_path / "out", data_dir=data, device="cpu", resume=True)
    assert resumed.global_step == 6, moment
    found = adapter_weights(tmp_path / "out")
    assert found.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-4, atol=1e-6, msg=f"{moment}: {name}")


def test_a_partly_written_checkpoint_is_skipped_with_a_warning(tiny_model_dir, data_dir, tmp_path, caplog):
    recipe = tiny_recipe(tiny_model_dir, max_steps=3)
    train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")
    partial = tmp_path / "out" / "checkpoints" / "checkpoint-10"
    partial.mkdir()
    (partial / "config_sentence_transformers.json").write_text("{}")  # what a kill while saving left behind
    result = train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu", resume=True)
    assert result.global_step == 3  # resumed from checkpoint-3, which had finished
    assert "checkpoint-10 is incomplete" in caplog.text


def test_training_into_a_previous_runs_folder_needs_resume_or_overwrite(tiny_model_dir, data_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, max_steps=3)
    train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")
    checkpoint = tmp_path / "out" / "checkpoints" / "checkpoint-3"
    with pytest.raises(ValueError, match=r"out is not empty \(a previous run\?\); pass --resume .* --overwrite"):
        train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")
    assert checkpoint.exists()

    arguments = ["train", "-o", str(tmp_path / "out"), "--base", tiny_model_dir, "--data-dir", str(data_dir),
                 "--train-data", "triplets.tsv", "--no-dev", "--max-steps", "2", "--batch-size", "8", "-k", "2"]
    refused = CliRunner().invoke(app, arguments)
    assert refused.exit_code == 2 and "--overwrite" in refused.output and refused.output.count("\n") <= 3
    assert checkpoint.exists()
    replaced = CliRunner().invoke(app, [*arguments, "--overwrite", "--save-steps", "2"])
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["checkpoint-2"]


def test_resume_refuses_a_changed_recipe(tiny_model_dir, data_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, max_steps=3)
    train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")
    with pytest.raises(ValueError, match=r"different recipe \(changed: learning_rate\).*--recipe"):
        train(recipe.with_changes(learning_rate=1e-3), tmp_path / "out", data_dir=data_dir, device="cpu", resume=True)


def folder_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def test_resuming_a_finished_run_trains_nothing_and_says_so(tiny_model_dir, data_dir, tmp_path, caplog):
    # 2 steps an epoch: the last step falls inside the second epoch, where the trainer used to train a step more.
    recipe = tiny_recipe(tiny_model_dir, max_steps=3, save_steps=3, batch_size=4, dev_data=["dev.tsv"])
    finished = train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")
    before = folder_snapshot(tmp_path / "out")

    resumed = train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu", resume=True)
    assert "finished the run's 3 steps" in caplog.text and "nothing to train" in caplog.text
    assert (resumed.global_step, resumed.dev_scores, resumed.data_rows) == (3, finished.dev_scores, finished.data_rows)
    cli = CliRunner().invoke(app, ["train", "--recipe", str(tmp_path / "out" / "recipe.json"), "-o", str(tmp_path / "out"),
                                   "--data-dir", str(data_dir), "--device", "cpu", "--resume"])
    assert cli.exit_code == 0 and "after 3 steps" in cli.output, cli.output
    assert folder_snapshot(tmp_path / "out") == before  # not a file written, rotated or removed


def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_final_save_only(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    recipe = tiny_recipe(tiny_model_dir, max_steps=3, save_steps=3, batch_size=4)
    with monkeypatch.context() as patches, pytest.raises(Killed):
        kill_at_call(patches, BeLLMEncoder, "save", 2)  # checkpoint-3 written, then the final save dies
        train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu")
    assert not (tmp_path / "out" / "dev_scores.json").exists()

    resumed = train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu", resume=True)
    assert resumed.global_step == 3
    checkpoints = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3"]
    final, last = adapter_weights(tmp_path / "out"), adapter_weights(checkpoints / "checkpoint-3")
    assert final.keys() == last.keys() and all(torch.equal(final[name], last[name]) for name in final)


def test_gradient_checkpointing_is_on_and_still_trains_the_adapter(tiny_model_dir, data_dir, tmp_path):
    from bellm_st.training.trainer import build_trainable_model

    model = build_trainable_model(tiny_recipe(tiny_model_dir, gradient_checkpointing=True), "cpu")
    flags = [getattr(m, name, False) for m in model[0].decoder.modules() for name in ("gradient_checkpointing", "activation_checkpointing")]
    assert any(flag is True for flag in flags)
    train(tiny_recipe(tiny_model_dir, max_steps=2, gradient_checkpointing=True), tmp_path / "out", data_dir=data_dir, device="cpu")
    lora_b = [value for name, value in adapter_weights(tmp_path / "out").items() if "lora_B" in name]
    assert lora_b and all(value.abs().sum() > 0 for value in lora_b)  # B starts at zero; gradients reached it


def test_cli_train_then_recipe_reproduces_the_run(tiny_model_dir, data_dir, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    common = ["--data-dir", str(data_dir), "--device", "cpu"]
    first = CliRunner().invoke(app, ["train", "--base", tiny_model_dir, "--train-data", "triplets.tsv:triplets", "--no-dev",
                                     "--max-steps", "2", "--batch-size", "4", "--lora-r", "4", "-k", "2", "-o", str(tmp_path / "a"), *common])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["train", "--recipe", str(tmp_path / "a" / "recipe.json"), "-o", str(tmp_path / "b"), *common])
    assert again.exit_code == 0, again.output
    a, b = adapter_weights(tmp_path / "a"), adapter_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_cli_train_reports_bad_data_with_file_and_line(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from bellm_st.cli import app

    (tmp_path / "bad.tsv").write_text("anchor\tpositive\na\tb\tc\n")
    result = CliRunner().invoke(app, ["train", "--base", tiny_model_dir, "--train-data", "bad.tsv", "--no-dev",
                                      "--data-dir", str(tmp_path), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "bad.tsv, line 2" in result.output.replace("\n", "")


def test_distributed_training_with_torchrun_splits_the_data_and_gathers_negatives(tiny_model_dir, data_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m bellm_st.cli train` (two CPU processes over gloo) trains one model."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bellm_st.cli", "train",
               "--base", tiny_model_dir, "--train-data", "triplets.tsv:triplets", "--no-dev", "--data-dir", str(data_dir),
               "--max-steps", "2", "--save-steps", "2", "--batch-size", "2", "--lora-r", "4", "-k", "2", "--device", "cpu",
               "--gather-across-devices", "-o", str(out)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 * 2 * 2 / len(TRIPLETS)  # 2 steps x 2 triplets x 2 processes of the 8 triplets
    assert Recipe.load(out).gather_across_devices is True
    lora_b = [value for name, value in adapter_weights(out).items() if "lora_B" in name]
    assert lora_b and all(value.abs().sum() > 0 for value in lora_b)


def test_training_runs_with_cudnn_attention_off(tiny_model_dir, data_dir, tmp_path):
    """cuDNN re-plans attention for every padded batch shape (2x slower training on an H100)."""

    class RecordAttentionBackend(TrainerCallback):
        seen: list[bool] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.seen.append(torch.backends.cuda.cudnn_sdp_enabled())

    recorder = RecordAttentionBackend()
    train(tiny_recipe(tiny_model_dir, max_steps=2), tmp_path / "out", data_dir=data_dir, device="cpu", callbacks=[recorder])
    assert recorder.seen == [False, False]
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored afterwards


def test_packed_training_learns_what_padded_training_learns(tiny_model_dir, data_dir, tmp_path):
    """Packing changes how texts are laid out, not the gradients: the adapters end up the same."""
    padded = train(tiny_recipe(tiny_model_dir, packing_row_length=0, max_steps=3, save_steps=3), tmp_path / "padded",
                   data_dir=data_dir, device="cpu")
    packed = train(tiny_recipe(tiny_model_dir, packing_row_length=128, max_steps=3, save_steps=3), tmp_path / "packed",
                   data_dir=data_dir, device="cpu")
    assert packed.training_loss == pytest.approx(padded.training_loss, rel=1e-4)
    expected, found = adapter_weights(tmp_path / "padded"), adapter_weights(tmp_path / "packed")
    assert expected.keys() == found.keys()
    for name in expected:
        assert torch.allclose(found[name], expected[name], atol=1e-4), name
    # the saved model pads again at inference (packing is a run-time choice)
    assert SentenceTransformer(str(tmp_path / "packed"), trust_remote_code=True, device="cpu")[0].batch_layout is None


def test_resume_accepts_a_changed_packing_row_length(tiny_model_dir, data_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, packing_row_length=0, max_steps=4)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "out", data_dir=data_dir, device="cpu", callbacks=[StopAtStep(3)])
    result = train(recipe.with_changes(packing_row_length=256), tmp_path / "out", data_dir=data_dir,
                   resume=True, device="cpu")
    assert result.global_step == 4


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_recipe_refuses_a_bad_packing_row_length(value):
    with pytest.raises(ValueError, match="packing_row_length"):
        Recipe(packing_row_length=value)


def test_compiled_layers_train_like_eager_layers(tiny_model_dir, data_dir, tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    eager = train(tiny_recipe(tiny_model_dir, max_steps=2, save_steps=2), tmp_path / "eager", data_dir=data_dir, device="cpu")
    compiled = train(tiny_recipe(tiny_model_dir, max_steps=2, save_steps=2, compile_layers=True), tmp_path / "compiled",
                     data_dir=data_dir, device="cpu")
    assert counters["stats"]["unique_graphs"] >= 2  # causal and bi-directional layers, forward and backward
    assert compiled.training_loss == pytest.approx(eager.training_loss, rel=1e-4)
    expected, found = adapter_weights(tmp_path / "eager"), adapter_weights(tmp_path / "compiled")
    for name in expected:
        assert torch.allclose(found[name], expected[name], atol=1e-4), name


def test_dataloader_workers_follow_the_recipe_or_the_machine(monkeypatch):
    from bellm_st.training.trainer import dataloader_workers

    assert dataloader_workers(Recipe(dataloader_workers=3), on_gpu=False) == 3
    assert dataloader_workers(Recipe(), on_gpu=False) == 0  # workers would take the CPU training's own cores
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert dataloader_workers(Recipe(), on_gpu=True) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 GPUs sharing the 16 cores
    assert dataloader_workers(Recipe(), on_gpu=True) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert dataloader_workers(Recipe(), on_gpu=True) == 0
    with pytest.raises(ValueError, match="dataloader_workers"):
        Recipe(dataloader_workers=-1)
