"""The ``bellm-st`` command line: thin wrappers around the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="BeLLM sentence embeddings from decoder-only LLMs.", no_args_is_help=True)
console = Console()

MODEL_HELP = "A shipped model or base name, or a saved model folder (default: the shipped default model)."


def _read_texts(texts: list[str], file: Path | None) -> list[str]:
    collected = list(texts)
    if file is not None:
        collected += [line.rstrip("\n") for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return collected


def _load_model(model: str | None, device: str | None):
    from bellm_st.api import load_default_or

    return load_default_or(model, device=device)


def _fail(error: Exception) -> None:
    console.print(f"[red]error:[/red] {error}")
    raise typer.Exit(code=2)


@app.command()
def encode(
    texts: list[str] = typer.Argument(None, help="Texts to embed."),
    file: Path = typer.Option(None, "--file", "-f", help="A UTF-8 file with one text per line."),
    output: Path = typer.Option(None, "--output", "-o", help="Write vectors to .npy or .jsonl instead of stdout."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    prompt_name: str = typer.Option(None, help="Use the model's named prompt, e.g. query or document."),
    batch_size: int = typer.Option(32, min=1),
    normalize: bool = typer.Option(True, help="L2-normalise the vectors."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
) -> None:
    """Embed texts and print them as JSON lines (or save them)."""
    from bellm_st.inputs import validate_texts

    try:
        items = validate_texts(_read_texts(texts or [], file), where="texts")
    except (TypeError, ValueError) as error:
        _fail(error)
    encoder = _load_model(model, device)
    vectors = encoder.encode(
        items,
        prompt_name=prompt_name,
        batch_size=batch_size,
        normalize_embeddings=normalize,
        show_progress_bar=len(items) > batch_size,
    )
    if output is not None and output.suffix == ".npy":
        import numpy as np

        np.save(output, vectors)
    else:
        lines = [json.dumps({"text": text, "embedding": vector.tolist()}) for text, vector in zip(items, vectors)]
        if output is not None:
            output.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            sys.stdout.write("\n".join(lines) + "\n")
    if output is not None:
        console.print(f"wrote {len(items)} vectors of dimension {vectors.shape[1]} to {output}")


@app.command()
def similarity(
    texts: list[str] = typer.Argument(..., help="Two or more texts to compare."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
) -> None:
    """Print the cosine similarity of every pair of texts."""
    from bellm_st.inputs import validate_texts

    try:
        items = validate_texts(texts, where="texts")
        if len(items) < 2:
            raise ValueError("similarity needs at least two texts")
    except (TypeError, ValueError) as error:
        _fail(error)
    encoder = _load_model(model, device)
    vectors = encoder.encode(items, normalize_embeddings=True, convert_to_tensor=True)
    scores = (vectors @ vectors.T).cpu()
    table = Table(title="cosine similarity")
    table.add_column("#")
    table.add_column("text")
    for column in range(len(items)):
        table.add_column(str(column))
    for row, text in enumerate(items):
        short = text if len(text) <= 50 else text[:47] + "..."
        table.add_row(str(row), short, *(f"{scores[row, column]:.3f}" for column in range(len(items))))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
