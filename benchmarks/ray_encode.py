"""Embedding files on a Ray cluster against one process, same texts: what the actors' start-up costs and buys.

Times `bellm_st.cluster.encode_files` (read parquet, actors each loading the model, embed, write
one parquet per input file), start to finish, against one process that loads the model and
embeds the same texts the way an actor does (`model.encode` on a CPU, `encode_bulk` with the
command line's limits on a GPU). Prints JSON with the machine and versions.

    python benchmarks/ray_encode.py --device cpu --workers 2 --count 2000          # 2-core CPU
    python benchmarks/ray_encode.py --device cuda --workers 1 --count 200000       # one GPU actor vs one process
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    parser = harness.base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="what bellm_st.load takes (default: the default model)")
    parser.add_argument("--count", type=int, default=2000, help="texts to embed")
    parser.add_argument("--files", type=int, default=4, help="parquet files the texts are split into")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (each loads the model)")
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray cluster (default: all)")
    args = parser.parse_args()

    import ray
    import torch

    from bellm_st.api import GPU_BATCH_TEXTS, GPU_BATCH_TOKENS, inference_dtype, load
    from bellm_st.fast import encode_bulk
    from bellm_st.cluster import encode_files

    texts = harness.load_sentences(args.data, args.count, args.words, args.seed)
    result: dict = {"environment": harness.environment(), "texts": len(texts), "files": args.files,
                    "device": args.device, "workers": args.workers}
    result["environment"]["versions"]["ray"] = harness._version("ray")

    started = time.perf_counter()
    model = load(args.model, device=args.device)
    model.to(inference_dtype("auto", model.device))
    result["one_process_load_seconds"] = time.perf_counter() - started

    def embed_in_one_process(batch: list[str]) -> np.ndarray:
        if args.device == "cuda":
            return encode_bulk(model, batch, batch_size=GPU_BATCH_TEXTS, max_batch_tokens=GPU_BATCH_TOKENS,
                               normalize_embeddings=True)
        return model.encode(batch, normalize_embeddings=True)

    embed_in_one_process(texts[:64])  # warm-up
    seconds, expected = harness.timed(lambda: embed_in_one_process(texts), args.device)
    result["one_process_seconds"] = seconds
    result["one_process_texts_per_second"] = len(texts) / seconds
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus"
        corpus.mkdir()
        for part, rows in enumerate(np.array_split(np.arange(len(texts)), args.files)):
            pq.write_table(pa.table({"id": rows.tolist(), "text": [texts[row] for row in rows]}),
                           corpus / f"part-{part:03d}.parquet")
        started = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, logging_level="WARNING", include_dashboard=False)
        result["ray_init_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        encode_files(str(corpus / "*.parquet"), Path(folder) / "vectors", args.model, workers=args.workers,
                     device=args.device, normalize_embeddings=True, show_progress=False)
        seconds = time.perf_counter() - started
        ray.shutdown()
        written = pa.concat_tables([pq.read_table(path) for path in sorted((Path(folder) / "vectors").glob("*.parquet"))])
        vectors = np.asarray(written.column("embedding").to_pylist(), dtype=np.float32)
    result["ray_seconds_with_actor_start_and_model_load"] = seconds
    result["ray_texts_per_second"] = len(texts) / seconds
    result["ray_over_one_process_throughput"] = result["ray_texts_per_second"] / result["one_process_texts_per_second"]
    result["ray_over_one_process_including_its_load"] = (
        (result["one_process_seconds"] + result["one_process_load_seconds"]) / seconds)
    result["ids_in_order"] = written.column("id").to_pylist() == list(range(len(texts)))
    result["max_abs_difference"] = float(np.abs(vectors - expected).max())
    print(json.dumps(result, indent=2, default=str))
    harness.write_result(f"ray_encode_{args.device}", result, args.out)


if __name__ == "__main__":
    main()
