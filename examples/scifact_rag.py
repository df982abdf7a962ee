"""What the two SciFact RAG examples share: the subset, the models, nDCG@10 and the report.

Both examples index the same documents in a real vector store through their framework's
adapter, retrieve the top 10 for each claim, and score the ranking with nDCG@10 against the train
qrels. Each runs the BeLLM model and the all-MiniLM-L6-v2 baseline through the same pipeline.
By default each model is also scored fused with BM25 (the framework's hybrid retriever from the
integration, bellm_st.fusion's weights unless --dense-weight/--bm25-weight/--rrf-k say
otherwise), and BM25 alone once; ``--dense-only`` leaves the hybrid rows out. With ``--adapt``
both are first adapted to the subset's abstracts without labels (:func:`bellm_st.training.adapt`:
weak title/sentence -> passage pairs plus NLI triplets) and the adapted models run through the
same pipeline beside the originals.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sentence_transformers import SentenceTransformer

from bellm_st.api import default_model_name, load
from bellm_st.fusion import DEFAULT_RRF_K, DEFAULT_WEIGHTS, check_rrf_k, resolve_weights
from bellm_st.shipped import baseline_path
from bellm_st.evaluation.retrieval import RetrievalSet, read_beir_folder

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"
TOP_K = 10


@dataclass(frozen=True)
class Subset:
    """The queries and documents one run uses, and how they were chosen (printed with the result)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    description: str


def parse_args(framework: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"RAG retrieval on SciFact with {framework}: BeLLM vs all-MiniLM-L6-v2, nDCG@10 on the train qrels."
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder (default: %(default)s)")
    parser.add_argument("--model", default=None, help="BeLLM model name or folder (default: the shipped default)")
    parser.add_argument(
        "--limit-queries", type=int, default=50, help="claims to retrieve for, 0 = all 809 (default: %(default)s)"
    )
    parser.add_argument(
        "--limit-corpus",
        type=int,
        default=400,
        help="documents to index: every relevant one plus random others, 0 = all 5183 (default: %(default)s)",
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="token budget per text (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed for the random subset (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: CUDA when available)")
    parser.add_argument("--adapt", action="store_true", help="also adapt both models to the indexed abstracts (no labels)")
    parser.add_argument("--adapt-steps", type=int, default=30, help="training steps per adapted model (default: %(default)s)")
    parser.add_argument("--adapt-batch-size", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--adapt-dir", type=Path, default=None, help="keep the adapted models here (default: a temporary folder)")
    parser.add_argument("--dense-only", action="store_true",
                        help="leave out BM25 alone and each model fused with BM25 (reciprocal rank fusion)")
    parser.add_argument("--bm25-weight", type=float, default=DEFAULT_WEIGHTS["bm25"], help="(default: %(default)s)")
    parser.add_argument("--dense-weight", type=float, default=DEFAULT_WEIGHTS["dense"], help="(default: %(default)s)")
    parser.add_argument("--rrf-k", type=int, default=DEFAULT_RRF_K,
                        help="the constant added to each rank (default: %(default)s)")
    args = parser.parse_args()
    try:
        args.weights = resolve_weights({"bm25": args.bm25_weight, "dense": args.dense_weight})
        check_rrf_k(args.rrf_k)
    except ValueError as error:
        parser.error(str(error))
    return args


def load_subset(folder: Path, limit_queries: int, limit_corpus: int, seed: int) -> Subset:
    """A reproducible subset: sampled claims, all their relevant documents, then random others."""
    data: RetrievalSet = read_beir_folder(folder, split="train")
    rng = random.Random(seed)
    query_ids = sorted(data.queries)
    if 0 < limit_queries < len(query_ids):
        query_ids = sorted(rng.sample(query_ids, limit_queries))
    relevant = {query_id: data.relevant[query_id] for query_id in query_ids}
    needed = sorted(set().union(*relevant.values()))
    others = sorted(set(data.corpus) - set(needed))
    if limit_corpus > 0:
        others = rng.sample(others, max(0, limit_corpus - len(needed)))
    document_ids = needed + sorted(others)
    description = (
        f"{len(query_ids)} of {len(data.queries)} train claims (seed {seed}); "
        f"{len(document_ids)} of {len(data.corpus)} abstracts ({len(needed)} relevant + {len(others)} random others)"
    )
    return Subset(
        queries={query_id: data.queries[query_id] for query_id in query_ids},
        corpus={document_id: data.corpus[document_id] for document_id in document_ids},
        relevant=relevant,
        description=description,
    )


def ndcg_at_k(ranked_ids: Sequence[str], relevant_ids: set[str], k: int = TOP_K) -> float:
    """Binary-relevance nDCG@k, as BEIR reports it for SciFact (all judgements are 1)."""
    gain = sum(1.0 / math.log2(rank + 2) for rank, doc_id in enumerate(ranked_ids[:k]) if doc_id in relevant_ids)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant_ids), k)))
    return gain / ideal


def models(model_name: str | None, max_tokens: int, device: str | None) -> dict[str, SentenceTransformer]:
    """The BeLLM model and the baseline, both cut to the same token budget."""
    # Abstracts are cut to --max-tokens on purpose; one warning per document would bury the output.
    logging.getLogger("bellm_st.tokenization").setLevel(logging.ERROR)
    model_name = model_name or default_model_name()
    bellm = load(model_name, device=device)
    baseline = SentenceTransformer(str(baseline_path("minilm")), device=bellm.device)
    for model in (bellm, baseline):
        model.max_seq_length = max_tokens
    return {f"BeLLM {model_name}": bellm, "all-MiniLM-L6-v2": baseline}


def adapted_models(
    originals: dict[str, str], subset: Subset, args: argparse.Namespace, work_dir: Path
) -> dict[str, SentenceTransformer]:
    """Each model adapted to the subset's abstracts (titles and texts only, never the qrels), cut to --max-tokens."""
    from bellm_st.training import adapt
    from bellm_st.training.weak_pairs import read_corpus

    corpus = work_dir / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        for document in read_corpus(args.data / "corpus.jsonl"):
            if document.id in subset.corpus:
                handle.write(json.dumps({"_id": document.id, "title": document.title, "text": document.text}) + "\n")
    adapted = {}
    for label, name in originals.items():
        output = work_dir / label.replace(" ", "-").replace("/", "-")
        print(f"\n== adapting {label} to {len(subset.corpus)} abstracts ({args.adapt_steps} steps)")
        adapt(corpus, output, model=name, data_dir=args.data.parent, max_steps=args.adapt_steps,
              batch_size=args.adapt_batch_size, max_seq_length=args.max_tokens, seed=args.seed, device=args.device)
        model = SentenceTransformer(str(output), device=args.device, trust_remote_code=True)
        model.max_seq_length = args.max_tokens
        adapted[f"{label} adapted"] = model
    return adapted


Rankings = dict[str, list[str]]  # query id -> document ids, best first
Retrieve = Callable[[SentenceTransformer, Subset, argparse.Namespace], Rankings]
Fuse = Callable[[SentenceTransformer | None, Subset, argparse.Namespace], Rankings]  # None: BM25 alone


def run_comparison(framework: str, evaluate: Retrieve, hybrid: Fuse) -> None:
    """Parse the options, run ``evaluate`` (index + retrieve) for each model and ``hybrid`` (BM25 alone
    for ``None``, else BM25 fused with the model) unless --dense-only, and print nDCG@10."""
    args = parse_args(framework)
    subset = load_subset(args.data, args.limit_queries, args.limit_corpus, args.seed)
    print(f"SciFact train qrels, {framework}: {subset.description}; texts cut to {args.max_tokens} tokens")
    compared = models(args.model, args.max_tokens, args.device)
    with tempfile.TemporaryDirectory(prefix="scifact-adapt-") as scratch:
        if args.adapt:
            work_dir = args.adapt_dir or Path(scratch)
            work_dir.mkdir(parents=True, exist_ok=True)
            originals = {f"BeLLM {args.model or default_model_name()}": args.model or default_model_name(),
                         "all-MiniLM-L6-v2": "minilm"}
            compared.update(adapted_models(originals, subset, args, work_dir))
        rows = [] if args.dense_only else evaluate_all(hybrid, {"BM25 alone": None}, subset, args)
        for label, model in compared.items():
            rows += evaluate_all(evaluate, {f"{label}, dense": model}, subset, args)
            if not args.dense_only:
                rows += evaluate_all(hybrid, {f"{label} + BM25, fused": model}, subset, args)
    print(f"\nnDCG@10 on SciFact train qrels ({framework}; {subset.description}; {args.max_tokens} tokens)")
    if not args.dense_only:
        weights = ", ".join(f"{name} {weight:g}" for name, weight in args.weights.items())
        print(f"  fused: weighted reciprocal rank fusion ({weights}; rrf_k {args.rrf_k})")
    for label, score, seconds in rows:
        print(f"  {label:<48} nDCG@10 = {score:5.1f}   (index + retrieve: {seconds:.0f} s)")


def evaluate_all(
    evaluate: Callable[..., Rankings],
    compared: dict[str, SentenceTransformer | None],
    subset: Subset,
    args: argparse.Namespace,
) -> list[tuple[str, float, float]]:
    """Index and retrieve with each model, and score its rankings."""
    rows = []
    for label, model in compared.items():
        print(f"\n== {label}")
        start = time.perf_counter()
        rankings = evaluate(model, subset, args)
        seconds = time.perf_counter() - start
        score = 100.0 * sum(ndcg_at_k(rankings[q], subset.relevant[q]) for q in subset.queries) / len(subset.queries)
        rows.append((label, score, seconds))
    return rows
