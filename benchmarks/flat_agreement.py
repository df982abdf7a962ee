"""Flat batches on a GPU agree with padded ones: every architecture, both flat attention kernels.

The unit tests check flat batches against padded ones on CPU (the packed kernel in Triton's
interpreter, which does not emulate bf16 faithfully). This runs the same comparison where the
kernels really run: tiny random models of each architecture (sliding windows and grouped
heads included, head dim 64) in bf16 on CUDA, real sentences, k bi-directional layers. It
prints the lowest cosine between each text's flat and padded embedding, next to the bf16 noise
floor (padded bf16 against padded fp32).

GPU:  python benchmarks/flat_agreement.py --data ../shared/data/sts/stsb-dev.tsv
"""

from __future__ import annotations

from typing import Any

import harness
import numpy as np
import torch

from bellm_st.fast import flat
from bellm_st.fast.flat import flat_features
from bellm_st.module import BeLLMEncoder
from bellm_st.testing import TINY_ARCHITECTURES, build_tiny_tokenizer, tiny_config


def arguments():
    parser = harness.base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--layers", type=int, default=2, help="bi-directional layers of the 4")
    return parser.parse_args()


def encoder_for(architecture: str, tokenizer, layers: int) -> BeLLMEncoder:
    from transformers import AutoModel

    config = tiny_config(architecture, vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    torch.manual_seed(0)
    backbone = AutoModel.from_config(config)
    return BeLLMEncoder(backbone=backbone, tokenizer=tokenizer, bidirectional_layers=layers, pooling="mean")


def embeddings(encoder: BeLLMEncoder, texts: list[str], in_one_row: bool, device: torch.device) -> np.ndarray:
    features: dict[str, Any] = flat_features(encoder.tokenize_unpadded(texts)) if in_one_row else encoder.preprocess(texts)
    features = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in features.items()}
    with torch.inference_mode():
        return encoder(features)["sentence_embedding"].float().cpu().numpy()


def main() -> None:
    args = arguments()
    device = torch.device("cuda")
    texts = harness.load_sentences(args.data, args.sentences, args.words, args.seed)
    tokenizer = build_tiny_tokenizer()
    rows, results = [], {}
    for architecture in sorted(set(TINY_ARCHITECTURES) - {"gemma2"}):  # gemma2 caps logits: no flat batches
        with harness.recorded_failure(results, architecture):
            encoder = encoder_for(architecture, tokenizer, args.layers).to(device)
            reference = embeddings(encoder, texts, in_one_row=False, device=device)
            encoder.to(torch.bfloat16)
            row: dict[str, Any] = {"architecture": architecture}
            row["padded bf16"] = harness.cosine_rows(embeddings(encoder, texts, False, device), reference).min()
            saved = flat.PACKED_LONGEST, flat.PACKED_LONGEST_WIDE_HEADS
            kernels = [("flat packed", saved)]
            if flat._VARLEN_KERNEL is not None:  # without it, long and short batches alike go packed
                kernels.append(("flat flash", (0, 0)))
            for name, limits in kernels:
                flat.PACKED_LONGEST, flat.PACKED_LONGEST_WIDE_HEADS = limits
                try:
                    row[name] = harness.cosine_rows(embeddings(encoder, texts, True, device), reference).min()
                finally:
                    flat.PACKED_LONGEST, flat.PACKED_LONGEST_WIDE_HEADS = saved
            rows.append(row)
    harness.print_table(rows, ["architecture", "padded bf16", "flat packed", "flat flash"],
                        title=f"lowest cosine to padded fp32 over {len(texts)} sentences (k={args.layers} of 4)")
    for row in rows:
        print({key: (round(float(value), 6) if not isinstance(value, str) else value) for key, value in row.items()})
    results.update(rows=rows, environment=harness.environment(), arguments=vars(args))
    harness.write_result("flat_agreement", results, args.out)


if __name__ == "__main__":
    main()
