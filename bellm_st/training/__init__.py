"""Fine-tuning BeLLM encoders: recipe, data formats, tasks, objective, LoRA, trainer glue and corpus adaptation."""

from bellm_st.training.adaptation import adapt
from bellm_st.training.objective import BeLLMLoss
from bellm_st.training.recipe import DataSource, Recipe
from bellm_st.training.trainer import TrainingResult, train

__all__ = ["BeLLMLoss", "DataSource", "Recipe", "TrainingResult", "adapt", "train"]
