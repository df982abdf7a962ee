"""Encoding on a Ray cluster (extra ``bellm-st[ray]``): one model per actor, Ray Data feeding it.

``actor.py`` holds the callable class for ``Dataset.map_batches`` (a batch of rows in, the same
rows with an embedding column out); ``files.py`` turns folders of parquet/JSONL files into one
output parquet file per input file, checked before anything starts and written atomically, so an
interrupted run resumes where it stopped. Several GPUs of one machine need none of this:
``encode_bulk(model, texts, devices=[...])`` runs sentence-transformers' multi-process pool.
"""

from bellm_st.cluster.actor import EmbedBatches, embed_dataset
from bellm_st.cluster.files import encode_files

__all__ = ["EmbedBatches", "embed_dataset", "encode_files"]
