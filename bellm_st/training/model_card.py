"""The BeLLM section of a trained model's card: which data, which recipe, which scores."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from bellm_st.training.recipe import Recipe

CARD_FILE = "README.md"
SECTION_TITLE = "## BeLLM training"


def render_card_section(
    recipe: Recipe, data_rows: Mapping[str, int], dev_scores: Mapping[str, float], notes: str = ""
) -> str:
    """Markdown that lets a reader judge and reproduce the model without opening other files."""
    if recipe.init_model is None:
        start = (
            f"Base `{recipe.base}`, last {recipe.bidirectional_layers} layer(s) bi-directional, `{recipe.pooling}` pooling, "
            f"template `{recipe.template}`; LoRA r={recipe.lora_r}, alpha={recipe.lora_alpha}, dropout={recipe.lora_dropout}."
        )
    else:
        start = (
            f"Trained further from `{recipe.init_model}` (a BeLLM model: its adapter merged, then a new LoRA adapter "
            f"r={recipe.lora_r}, alpha={recipe.lora_alpha}; any other model: every weight trained)."
        )
    prompts = [f"`{name}`: `{getattr(recipe, f'{name}_template')}`" for name in ("query", "document")
               if getattr(recipe, f"{name}_template") is not None]
    by_path = {source.path: source for source in recipe.train_data}
    lines = [
        SECTION_TITLE,
        "",
        start,
        f"Objective: {recipe.contrastive_weight} x contrastive (scale {recipe.contrastive_scale}) + "
        f"{recipe.angle_weight} x angle + {recipe.cosent_weight} x CoSENT"
        + (f"; Matryoshka sizes {recipe.matryoshka_dims}." if recipe.matryoshka_dims else "."),
        *([f"Prompts: {', '.join(prompts)}."] if prompts else []),
        *(["", notes.strip()] if notes.strip() else []),
        "",
        "### Training data",
        "",
        "| file | examples | loss | prompts | max tokens |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {rows} | {_source_cells(by_path.get(name))} |"
            for name, rows in data_rows.items()
        ),
        "",
        "### Dev scores (Spearman x100 of cosine similarity)",
        "",
        "| data | score |",
        "|---|---|",
        *(f"| {name} | {score:.2f} |" for name, score in dev_scores.items()),
        "",
        "### Recipe",
        "",
        "Reproduce with `bellm-st train --recipe recipe.json --data-dir DATA --output-dir OUT`.",
        "",
        "```json",
        json.dumps(recipe.to_dict(), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _source_cells(source) -> str:
    if source is None:
        return " | | "
    prompts = ", ".join(f"{column}: {prompt}" for column, prompt in source.prompts.items()) or "model template"
    return f"{source.loss} | {prompts} | {source.max_seq_length or 'recipe default'}"


def add_card_section(folder: str | os.PathLike, section: str) -> Path:
    """Append the section to the card sentence-transformers wrote (or start a card if it wrote none)."""
    path = Path(folder) / CARD_FILE
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if SECTION_TITLE in existing:
        existing = existing[: existing.index(SECTION_TITLE)]
    path.write_text(existing.rstrip() + ("\n\n" if existing else "") + section, encoding="utf-8")
    return path
