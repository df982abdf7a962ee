"""Hybrid retrieval for LlamaIndex: its BM25Retriever and a vector index fused by its QueryFusionRetriever.

LlamaIndex has every part: ``BM25Retriever`` (llama-index-retrievers-bm25, over bm25s with the
English stemmer and stop words), vector retrievers, and ``QueryFusionRetriever`` in
``reciprocal_rerank`` mode. Two gaps are filled here. That mode ignores ``retriever_weights`` and
fixes k at 60, so :class:`WeightedReciprocalRankRetriever` overrides that one method to weight
each retriever and take ``rrf_k`` (ranks from 1, as in bellm_st.fusion and LangChain); it keeps
``num_queries=1``: the query is used as given, and no LLM writes other queries. And
``BM25Retriever`` returns its top k even where they share no word with the query (score 0),
which would hand the fusion those nodes in arbitrary order: :class:`MatchingBM25Retriever`
leaves them out, as bellm_st.bm25 does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle

from bellm_st.fusion import DEFAULT_RRF_K, FUSION_CANDIDATES, check_rrf_k, resolve_weights
from bellm_st.inputs import validate_text

DEFAULT_SIMILARITY_TOP_K = 4


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer of at least 1: the number of nodes to return")
    return value


class WeightedReciprocalRankRetriever(QueryFusionRetriever):
    """``QueryFusionRetriever`` in reciprocal-rank mode with per-retriever weights and ``rrf_k``.

    A node's score is ``sum(weight / (rrf_k + rank))`` over the retrievers that found it (ranks
    from 1); nodes are matched by ``node_id``; ties keep the order of first appearance, the
    retrievers read in the order given.
    """

    def __init__(
        self,
        retrievers: list[BaseRetriever],
        weights: Sequence[float],
        rrf_k: int = DEFAULT_RRF_K,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        **kwargs,
    ) -> None:
        if len(weights) != len(retrievers):
            raise ValueError(f"{len(weights)} weights for {len(retrievers)} retrievers; give one weight each")
        super().__init__(
            retrievers,
            llm=MockLLM(),  # never called with num_queries=1; keeps Settings.llm (OpenAI by default) out
            mode=FUSION_MODES.RECIPROCAL_RANK,
            similarity_top_k=_check_count(similarity_top_k, "similarity_top_k"),
            num_queries=1,
            use_async=False,
            **kwargs,
        )
        self.weights = list(weights)
        self.rrf_k = check_rrf_k(rrf_k)

    def _reciprocal_rerank_fusion(self, results: dict[tuple[str, int], list[NodeWithScore]]) -> list[NodeWithScore]:
        scores: dict[str, float] = {}
        nodes: dict[str, NodeWithScore] = {}
        for (_, retriever_index), found in results.items():
            ranked = sorted(found, key=lambda hit: hit.score or 0.0, reverse=True)
            for rank, hit in enumerate(ranked, start=1):
                node_id = hit.node.node_id
                nodes.setdefault(node_id, hit)
                scores[node_id] = scores.get(node_id, 0.0) + self.weights[retriever_index] / (self.rrf_k + rank)
        fused = []
        for node_id, score in sorted(scores.items(), key=lambda item: -item[1]):
            fused.append(NodeWithScore(node=nodes[node_id].node, score=score))
        return fused

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        validate_text(query_bundle.query_str, where="query")
        return super()._retrieve(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        validate_text(query_bundle.query_str, where="query")
        return await super()._aretrieve(query_bundle)


def hybrid_retriever(
    index: VectorStoreIndex | None = None,
    *,
    nodes: Sequence[BaseNode] | None = None,
    embed_model: BaseEmbedding | None = None,
    weights: Mapping[str, float] | None = None,
    rrf_k: int = DEFAULT_RRF_K,
    similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
    candidates: int = FUSION_CANDIDATES,
) -> WeightedReciprocalRankRetriever:
    """BM25 and dense retrieval over the same nodes, fused by weighted reciprocal rank.

    Give an existing ``index`` (its docstore's nodes feed BM25; pass ``nodes`` too where the
    vector store keeps the text and the docstore is empty), or ``nodes`` alone to build a
    ``VectorStoreIndex`` with ``embed_model`` (default: :class:`BeLLMEmbedding` with the shipped
    default model). ``weights`` maps ``bm25`` and ``dense`` to their weights (missing ones keep
    bellm_st.fusion's defaults, which weight BM25 above a possibly weak dense model); a ranking of
    weight 0 is not queried. Each side hands ``candidates`` nodes to the fusion, which keeps
    ``similarity_top_k``.
    """
    from llama_index.embeddings.bellm.bm25 import MatchingBM25Retriever  # needs llama-index-retrievers-bm25

    resolved = resolve_weights(weights)
    check_rrf_k(rrf_k)
    _check_count(similarity_top_k, "similarity_top_k")
    candidates = _check_count(candidates, "candidates")
    if index is not None and embed_model is not None:
        raise ValueError("pass embed_model only with nodes; an existing index embeds queries with its own model")
    if index is None and nodes is None:
        raise ValueError("pass index (an existing VectorStoreIndex) or nodes (to index here)")
    if nodes is None:
        nodes = list(index.docstore.docs.values())
        if not nodes:
            raise ValueError(
                "the index's docstore holds no nodes (its vector store keeps the text); pass nodes= for BM25"
            )
    nodes = list(nodes)
    if not nodes:
        raise ValueError("nodes is empty; give at least one node to retrieve from")
    retrievers, used = [], []
    if resolved["bm25"] > 0:
        retrievers.append(MatchingBM25Retriever.from_defaults(nodes=nodes, similarity_top_k=candidates))
        used.append(resolved["bm25"])
    if resolved["dense"] > 0:
        if index is None:
            if embed_model is None:
                from llama_index.embeddings.bellm.base import BeLLMEmbedding

                embed_model = BeLLMEmbedding()
            index = VectorStoreIndex(nodes, embed_model=embed_model)
        retrievers.append(index.as_retriever(similarity_top_k=candidates))
        used.append(resolved["dense"])
    return WeightedReciprocalRankRetriever(retrievers, used, rrf_k=rrf_k, similarity_top_k=similarity_top_k)
