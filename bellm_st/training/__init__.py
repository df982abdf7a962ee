"""Fine-tuning BeLLM encoders: recipe, data formats, objective, LoRA and trainer glue."""

from bellm_st.training.objective import BeLLMLoss
from bellm_st.training.recipe import DataSource, Recipe
from bellm_st.training.trainer import TrainingResult, train

__all__ = ["BeLLMLoss", "DataSource", "Recipe", "TrainingResult", "train"]
