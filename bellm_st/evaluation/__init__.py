"""Measuring sentence encoders: STS (Spearman) and retrieval (nDCG/Recall/MRR).

Evaluation never imports training; training uses these evaluators (dev scores while training, the layer sweep).
"""

from bellm_st.evaluation.retrieval import evaluate_retrieval, read_beir_folder
from bellm_st.evaluation.sts import evaluate_sts_files, read_scored_pairs, spearman_x100

__all__ = ["evaluate_retrieval", "evaluate_sts_files", "read_beir_folder", "read_scored_pairs", "spearman_x100"]
