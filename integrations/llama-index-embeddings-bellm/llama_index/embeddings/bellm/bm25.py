"""LlamaIndex's BM25Retriever (bm25s, English stemmer and stop words) without the nodes that match no query word."""

from __future__ import annotations

from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.retrievers.bm25 import BM25Retriever


class MatchingBM25Retriever(BM25Retriever):
    """``BM25Retriever`` less the nodes that share no word with the query (score 0).

    ``BM25Retriever`` fills its top k with such nodes in arbitrary order; handed to a rank
    fusion they would outrank the other side's real finds.
    """

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [hit for hit in super()._retrieve(query_bundle) if (hit.score or 0.0) > 0]
