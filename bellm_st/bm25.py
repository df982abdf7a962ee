"""Lexical ranking with BM25 (bm25s): the half of hybrid retrieval that matches words, not meaning.

One set of settings serves ``bellm-st eval --hybrid`` and the LangChain BM25 retriever, so a
figure measured here is what a RAG user gets: Lucene BM25 (k1 1.5, b 0.75, bm25s' defaults),
lower-cased word tokens, bm25s' English stop words and the Snowball English stemmer
(PyStemmer). A document that shares no word with the query scores 0 and is left out: it is no
lexical match, and ranking it would hand reciprocal rank fusion an arbitrary order.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

import numpy as np

from bellm_st.inputs import validate_text, validate_texts

STOPWORDS = "en"
STEMMER_LANGUAGE = "english"
INSTALL_HINT = "BM25 needs bm25s and PyStemmer: pip install 'bellm-st[hybrid]'"


def _bm25s():
    try:
        import bm25s
        import Stemmer
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return bm25s, Stemmer.Stemmer(STEMMER_LANGUAGE)


def bm25_settings() -> dict[str, str]:
    """What produced a BM25 ranking, for result files."""
    return {
        "library": f"bm25s {metadata.version('bm25s')}",
        "method": "lucene (k1 1.5, b 0.75)",
        "stop_words": STOPWORDS,
        "stemmer": f"Snowball {STEMMER_LANGUAGE} (PyStemmer {metadata.version('PyStemmer')})",
    }


class BM25Index:
    """A BM25 index of fixed texts; :meth:`search` returns (position in ``texts``, score) pairs, best first.

    Ties keep the texts' order, so a ranking is the same on every run.
    """

    def __init__(self, texts: Sequence[str], *, where: str = "documents", show_progress: bool = False) -> None:
        if isinstance(texts, Sequence) and not isinstance(texts, (str, bytes)) and len(texts) == 0:
            raise ValueError(f"{where} is empty; BM25 needs at least one document to index")
        texts = validate_texts(texts, where=where)
        self._bm25s, self._stemmer = _bm25s()
        self._show_progress = show_progress
        self._index = self._bm25s.BM25()
        self._index.index(self._tokenize(texts), show_progress=show_progress)
        self.size = len(texts)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        return self._bm25s.tokenize(
            texts, stopwords=STOPWORDS, stemmer=self._stemmer, return_ids=False, show_progress=self._show_progress
        )

    def search(self, queries: Sequence[str], top_k: int, *, where: str = "queries") -> list[list[tuple[int, float]]]:
        """The ``top_k`` best-scoring texts for each query; fewer where fewer share a word with it."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r} must be an integer of at least 1")
        queries = validate_texts(queries, where=where)
        rankings = []
        for tokens in self._tokenize(queries):
            if not tokens:  # only stop words or punctuation: nothing to match
                rankings.append([])
                continue
            scores = self._index.get_scores(tokens)
            order = np.argsort(-scores, kind="stable")[:top_k]
            rankings.append([(int(position), float(scores[position])) for position in order if scores[position] > 0])
        return rankings

    def search_one(self, query: str, top_k: int) -> list[tuple[int, float]]:
        """:meth:`search` for one query, named ``query`` in errors."""
        return self.search([validate_text(query, where="query")], top_k)[0]
