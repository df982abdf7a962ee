"""BM25SRetriever and BeLLMHybridRetriever on tiny corpora: rankings, fusion, weights, async, bad input."""

from __future__ import annotations

import asyncio
import random
import re

import numpy as np
import pytest
from langchain_classic.retrievers import EnsembleRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from bellm_st.fusion import DEFAULT_RRF_K, DEFAULT_WEIGHTS, reciprocal_rank_fusion
from langchain_bellm import BeLLMEmbeddings, BeLLMHybridRetriever, BM25SRetriever

LEXICAL = Document(id="lexical", page_content="Frogs lay their eggs in ponds.")
NEIGHBOUR = Document(id="neighbour", page_content="Amphibians spawn in shallow water.")
DOCUMENTS = [
    Document(id="stocks", page_content="The stock market fell sharply today."),
    LEXICAL,
    Document(id="banks", page_content="Central banks raised interest rates again."),
    NEIGHBOUR,
    Document(id="football", page_content="Children are playing football in the park."),
]
QUERY = "where do frogs lay eggs"


class ConceptEmbeddings(Embeddings):
    """A stand-in for a good embedding model: words of one concept share a direction, so the dense side
    finds a paraphrase that shares no word with the query. Counts the texts it embeds."""

    CONCEPTS = (("frog", "amphibian"), ("egg", "spawn"), ("stock", "market", "bank", "interest"), ("football", "park"))

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def _vector(self, text: str) -> list[float]:
        words = re.findall(r"\w+", text.lower())
        counts = [sum(any(word.startswith(stem) for stem in stems) for word in words) for stems in self.CONCEPTS]
        vector = np.array([*counts, 0.1])
        return (vector / np.linalg.norm(vector)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded += texts
        return [self._vector(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        self.embedded.append(text)
        return self._vector(text)


def ids(documents: list[Document]) -> list[str]:
    return [document.id for document in documents]


def test_bm25_ranks_the_lexical_match_first_and_leaves_out_documents_sharing_no_word():
    retriever = BM25SRetriever.from_documents(DOCUMENTS, k=5)
    assert ids(retriever.invoke(QUERY)) == ["lexical"]
    assert ids(retriever.invoke("rising interest rates", k=1)) == ["banks"]
    assert ids(retriever.invoke("in the park", k=5)) == ["football"]  # three documents hold "in", a stop word
    assert retriever.invoke("in the", k=5) == []


def test_fusion_keeps_the_lexical_match_first_and_adds_the_dense_neighbour():
    retriever = BeLLMHybridRetriever.from_documents(DOCUMENTS, embeddings=ConceptEmbeddings(), k=2)
    assert ids(retriever.invoke(QUERY)) == ["lexical", "neighbour"]  # BM25 alone finds only the first


@pytest.mark.parametrize(("weights", "side"), [({"bm25": 1, "dense": 0}, "bm25"), ({"bm25": 0, "dense": 1}, "dense")])
def test_a_zero_weight_gives_the_other_ranking_alone_and_is_not_queried(weights, side):
    embeddings = ConceptEmbeddings()
    retriever = BeLLMHybridRetriever.from_documents(DOCUMENTS, embeddings=embeddings, weights=weights, k=5)
    alone = (
        BM25SRetriever.from_documents(DOCUMENTS, k=5)
        if side == "bm25"
        else InMemoryVectorStore.from_documents(DOCUMENTS, ConceptEmbeddings()).as_retriever(search_kwargs={"k": 5})
    )
    embeddings.embedded.clear()
    assert ids(retriever.invoke(QUERY)) == ids(alone.invoke(QUERY))
    assert embeddings.embedded == ([] if side == "bm25" else [QUERY])


def test_documents_found_by_one_side_only_tie_at_equal_weights_and_the_tie_goes_to_bm25():
    pond = Document(id="pond", page_content="Garden ponds freeze in winter.")
    documents = [pond, NEIGHBOUR]
    # one candidate each: BM25 finds only "pond" (shares "ponds"), the dense side only the neighbour (frogs ~ amphibians)
    equal = BeLLMHybridRetriever.from_documents(documents, embeddings=ConceptEmbeddings(),
                                                weights={"bm25": 1, "dense": 1}, candidates=1, k=2)
    assert ids(equal.invoke("ponds frogs")) == ["pond", "neighbour"]  # 1/61 each
    denser = BeLLMHybridRetriever.from_documents(documents, embeddings=ConceptEmbeddings(),
                                                 weights={"bm25": 1, "dense": 1.01}, candidates=1, k=2)
    assert ids(denser.invoke("ponds frogs")) == ["neighbour", "pond"]


def test_langchain_ensemble_fusion_is_bellm_st_fusion():
    """The integration fuses with LangChain's EnsembleRetriever and `bellm-st eval --hybrid` with bellm_st.fusion:
    on random rankings with ties and one-sided documents both give the same order."""
    rng = random.Random(0)
    pool = [f"d{index}" for index in range(30)]
    for trial in range(50):
        bm25, dense = rng.sample(pool, rng.randint(0, 12)), rng.sample(pool, rng.randint(1, 12))
        weights = {"bm25": rng.choice([1.0, 0.5, 2.0]), "dense": rng.choice([1.0, 0.3, 0.5])}
        rrf_k = rng.choice([1, 10, 60])
        ensemble = EnsembleRetriever(retrievers=[BM25SRetriever.from_documents(DOCUMENTS)] * 2,
                                     weights=[weights["bm25"], weights["dense"]], c=rrf_k)
        theirs = ensemble.weighted_reciprocal_rank([[Document(page_content=d) for d in bm25],
                                                    [Document(page_content=d) for d in dense]])
        ours = reciprocal_rank_fusion({"bm25": bm25, "dense": dense}, weights, rrf_k)
        assert [document.page_content for document in theirs] == [d for d, _ in ours], trial


def test_an_existing_vector_store_is_used_as_it_is(tiny_bellm):
    store = InMemoryVectorStore.from_documents(DOCUMENTS, BeLLMEmbeddings(model=tiny_bellm))
    retriever = BeLLMHybridRetriever.from_documents(DOCUMENTS, vector_store=store, k=3)
    dense = store.as_retriever(search_kwargs={"k": 5}).invoke(QUERY)
    found = retriever.invoke(QUERY)
    assert found[0].id == "lexical" and len(found) == 3
    assert set(ids(found)) <= set(ids(dense)) | {"lexical"}


def test_bellm_embeddings_index_the_documents_when_no_store_is_given(tiny_bellm):
    retriever = BeLLMHybridRetriever.from_documents(DOCUMENTS, embeddings=BeLLMEmbeddings(model=tiny_bellm), k=5)
    found = retriever.invoke(QUERY)
    assert found[0].id == "lexical" and sorted(ids(found)) == sorted(ids(DOCUMENTS))
    assert retriever.weights == dict(DEFAULT_WEIGHTS) and retriever.rrf_k == DEFAULT_RRF_K


def test_async_gives_the_sync_result_and_invoke_k_overrides():
    retriever = BeLLMHybridRetriever.from_documents(DOCUMENTS, embeddings=ConceptEmbeddings(), k=4)
    assert ids(asyncio.run(retriever.ainvoke(QUERY))) == ids(retriever.invoke(QUERY))
    assert ids(asyncio.run(retriever.ainvoke(QUERY, k=1))) == ["lexical"]
    assert len(retriever.invoke(QUERY, k=5)) == 5
    bm25 = BM25SRetriever.from_documents(DOCUMENTS)
    assert ids(asyncio.run(bm25.ainvoke("stock market banks", k=1))) == ["stocks"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"documents": []}, "documents is empty; give at least one document"),
        ({"k": 0}, r"^k=0 must be an integer of at least 1"),
        ({"candidates": 0}, r"^candidates=0 must be an integer"),
        ({"rrf_k": 0}, r"^rrf_k=0 must be an integer of at least 1"),
        ({"weights": {"sparse": 1}}, r"^weights names 'sparse'"),
        ({"weights": {"dense": -1}}, r"^weights\['dense'\]=-1 must be a finite number of at least 0"),
        ({"weights": {"bm25": 0, "dense": 0}}, "are all 0"),
        ({"vector_store": "set below"}, "not both"),
        ({"documents": [Document(page_content="fine"), Document(page_content=" ")]},
         r"page_content of documents\[1\] is only whitespace"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    embeddings = ConceptEmbeddings()
    if "vector_store" in arguments:
        arguments = {"vector_store": InMemoryVectorStore(embeddings)}
    arguments = {"documents": DOCUMENTS, "embeddings": embeddings, **arguments}
    with pytest.raises(ValueError, match=message):
        BeLLMHybridRetriever.from_documents(arguments.pop("documents"), **arguments)


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [("", ValueError, r"^query is empty"), ("  ", ValueError, "only whitespace"), (None, TypeError, r"^query is NoneType")],
)
def test_bad_queries_are_named(query, error, message):
    retriever = BeLLMHybridRetriever.from_documents(DOCUMENTS, embeddings=ConceptEmbeddings())
    with pytest.raises(error, match=message):
        retriever.invoke(query)
    with pytest.raises(error, match=message):
        asyncio.run(retriever.ainvoke(query))
    with pytest.raises(ValueError, match=r"^k=0 must be"):
        retriever.invoke(QUERY, k=0)
