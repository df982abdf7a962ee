"""hybrid_retriever on tiny corpora: BM25 first, dense neighbours added, weights, ties, async, bad input."""

from __future__ import annotations

import asyncio
import random
import re

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.retrievers.bm25 import BM25Retriever

from bellm_st.fusion import DEFAULT_RRF_K, DEFAULT_WEIGHTS, reciprocal_rank_fusion
from llama_index.embeddings.bellm import BeLLMEmbedding, WeightedReciprocalRankRetriever, hybrid_retriever

NODES = [
    TextNode(id_="stocks", text="The stock market fell sharply today."),
    TextNode(id_="lexical", text="Frogs lay their eggs in ponds."),
    TextNode(id_="banks", text="Central banks raised interest rates again."),
    TextNode(id_="neighbour", text="Amphibians spawn in shallow water."),
    TextNode(id_="football", text="Children are playing football in the park."),
]
QUERY = "where do frogs lay eggs"
CONCEPTS = (("frog", "amphibian"), ("egg", "spawn"), ("stock", "market", "bank", "interest"), ("football", "park"))


class ConceptEmbedding(BaseEmbedding):
    """A stand-in for a good embedding model: words of one concept share a direction, so the dense side
    finds a paraphrase that shares no word with the query."""

    queries: list[str] = []

    @classmethod
    def class_name(cls) -> str:
        return "ConceptEmbedding"

    @staticmethod
    def _vector(text: str) -> list[float]:
        words = re.findall(r"\w+", text.lower())
        vector = np.array([*(sum(any(w.startswith(s) for s in stems) for w in words) for stems in CONCEPTS), 0.1])
        return (vector / np.linalg.norm(vector)).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        self.queries.append(query)
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def ids(hits: list[NodeWithScore]) -> list[str]:
    return [hit.node.node_id for hit in hits]


def test_bm25_alone_ranks_the_lexical_match_first():
    retriever = hybrid_retriever(nodes=NODES, weights={"dense": 0}, similarity_top_k=1)
    assert ids(retriever.retrieve(QUERY)) == ["lexical"]


def test_fusion_keeps_the_lexical_match_first_and_adds_the_dense_neighbour():
    retriever = hybrid_retriever(nodes=NODES, embed_model=ConceptEmbedding(), similarity_top_k=2)
    assert isinstance(retriever, WeightedReciprocalRankRetriever)
    assert ids(retriever.retrieve(QUERY)) == ["lexical", "neighbour"]


def test_a_zero_weight_gives_the_other_ranking_alone_and_is_not_queried():
    embedding = ConceptEmbedding(queries=[])
    bm25_only = hybrid_retriever(nodes=NODES, embed_model=embedding, weights={"bm25": 1, "dense": 0}, similarity_top_k=5)
    plain = BM25Retriever.from_defaults(nodes=NODES, similarity_top_k=5).retrieve(QUERY)
    assert ids(bm25_only.retrieve(QUERY)) == ids([hit for hit in plain if hit.score > 0]) == ["lexical"]
    assert len(plain) == 5  # LlamaIndex's own fills its top 5 with nodes that share no word
    assert embedding.queries == []
    index = VectorStoreIndex(NODES, embed_model=ConceptEmbedding())
    dense_only = hybrid_retriever(index, weights={"bm25": 0, "dense": 1}, similarity_top_k=5)
    assert ids(dense_only.retrieve(QUERY)) == ids(index.as_retriever(similarity_top_k=5).retrieve(QUERY))


def test_documents_found_by_one_side_only_tie_at_equal_weights_and_the_tie_goes_to_bm25():
    nodes = [TextNode(id_="pond", text="Garden ponds freeze in winter."), NODES[3]]
    equal = hybrid_retriever(nodes=nodes, embed_model=ConceptEmbedding(), weights={"bm25": 1, "dense": 1},
                             candidates=1, similarity_top_k=2)
    hits = equal.retrieve("ponds frogs")
    assert ids(hits) == ["pond", "neighbour"] and hits[0].score == pytest.approx(hits[1].score)
    denser = hybrid_retriever(nodes=nodes, embed_model=ConceptEmbedding(), weights={"bm25": 1, "dense": 1.01},
                              candidates=1, similarity_top_k=2)
    assert ids(denser.retrieve("ponds frogs")) == ["neighbour", "pond"]


class FixedRetriever:
    """Hands back a fixed ranking, so the fusion alone is under test."""

    def __init__(self, node_ids: list[str]) -> None:
        self.hits = [NodeWithScore(node=TextNode(id_=node_id, text=node_id), score=float(len(node_ids) - rank))
                     for rank, node_id in enumerate(node_ids)]

    def retrieve(self, query):
        return list(self.hits)


def test_the_fusion_is_bellm_st_fusion():
    """`bellm-st eval --hybrid` fuses with bellm_st.fusion; on random rankings the LlamaIndex retriever agrees."""
    rng = random.Random(0)
    pool = [f"d{index}" for index in range(30)]
    for trial in range(50):
        bm25, dense = rng.sample(pool, rng.randint(0, 12)), rng.sample(pool, rng.randint(1, 12))
        weights = {"bm25": rng.choice([1.0, 0.5, 2.0]), "dense": rng.choice([1.0, 0.3, 0.5])}
        rrf_k = rng.choice([1, 10, 60])
        fusion = WeightedReciprocalRankRetriever([FixedRetriever(bm25), FixedRetriever(dense)],
                                                 [weights["bm25"], weights["dense"]], rrf_k=rrf_k, similarity_top_k=30)
        ours = reciprocal_rank_fusion({"bm25": bm25, "dense": dense}, weights, rrf_k)
        hits = fusion.retrieve("a query")
        assert ids(hits) == [d for d, _ in ours], trial
        assert [hit.score for hit in hits] == pytest.approx([score for _, score in ours])


def test_an_existing_bellm_index_is_used_with_its_own_model(tiny_bellm):
    index = VectorStoreIndex(NODES, embed_model=BeLLMEmbedding(model=tiny_bellm))
    retriever = hybrid_retriever(index, similarity_top_k=3)
    hits = retriever.retrieve(QUERY)
    assert ids(hits)[0] == "lexical" and len(hits) == 3
    assert ids(asyncio.run(retriever.aretrieve(QUERY))) == ids(hits)


def test_nodes_alone_are_indexed_with_the_given_model(tiny_bellm):
    retriever = hybrid_retriever(nodes=NODES, embed_model=BeLLMEmbedding(model=tiny_bellm), similarity_top_k=5)
    assert ids(retriever.retrieve(QUERY))[0] == "lexical" and sorted(ids(retriever.retrieve(QUERY))) == sorted(
        node.node_id for node in NODES)
    assert retriever.weights == [DEFAULT_WEIGHTS["bm25"], DEFAULT_WEIGHTS["dense"]] and retriever.rrf_k == DEFAULT_RRF_K


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"nodes": []}, "nodes is empty; give at least one node"),
        ({"nodes": None}, "pass index .* or nodes"),
        ({"similarity_top_k": 0}, r"^similarity_top_k=0 must be an integer of at least 1"),
        ({"candidates": -1}, r"^candidates=-1 must be"),
        ({"rrf_k": 0}, r"^rrf_k=0 must be an integer of at least 1"),
        ({"weights": {"sparse": 1}}, r"^weights names 'sparse'"),
        ({"weights": {"bm25": -1}}, r"^weights\['bm25'\]=-1 must be a finite number of at least 0"),
        ({"weights": {"bm25": 0, "dense": 0}}, "are all 0"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    arguments = {"nodes": NODES, "embed_model": ConceptEmbedding(), **arguments}
    with pytest.raises(ValueError, match=message):
        hybrid_retriever(**arguments)


def test_an_index_with_a_model_or_an_empty_docstore_is_explained():
    index = VectorStoreIndex(NODES, embed_model=ConceptEmbedding())
    with pytest.raises(ValueError, match="pass embed_model only with nodes"):
        hybrid_retriever(index, embed_model=ConceptEmbedding())
    with pytest.raises(ValueError, match="docstore holds no nodes .* pass nodes= for BM25"):
        hybrid_retriever(VectorStoreIndex([], embed_model=ConceptEmbedding()))
    assert ids(hybrid_retriever(index, nodes=NODES, similarity_top_k=1).retrieve(QUERY)) == ["lexical"]


@pytest.mark.parametrize(("query", "message"), [("", r"^query is empty"), ("  ", "only whitespace")])
def test_bad_queries_are_named(query, message):
    retriever = hybrid_retriever(nodes=NODES, embed_model=ConceptEmbedding())
    with pytest.raises(ValueError, match=message):
        retriever.retrieve(query)
    with pytest.raises(ValueError, match=message):
        asyncio.run(retriever.aretrieve(query))
