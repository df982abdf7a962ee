"""``bellm_config.json``: the BeLLM settings a model folder carries, and the one schema every loader reads them with.

A saved encoder's folder holds the module's settings; an adapter folder (the shipped layout)
adds the base model, the layers to keep and the prompts. The file is read strictly: a value of
the wrong JSON type (``"normalize": "false"``), an unknown key or a missing one is refused naming
the key, instead of loading with another meaning or with the module's defaults.
"""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bellm_st.pooling import POOLING_MODES, PoolingMode

BOOLEAN = "true or false (a JSON boolean, no quotes)"
JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
SHOWN_VALUE_CHARS = 60


class EncoderSettings(BaseModel):
    """The settings of a saved :class:`~bellm_st.module.BeLLMEncoder`; its ``config_keys`` are these fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    bidirectional_layers: int | list[int] = Field(
        description="an int k (the last k layers) or a list of layer indices such as [2, 3]"
    )
    template: str = Field(description="a string with one {text} slot")
    pooling: PoolingMode = Field(description=f"one of {', '.join(map(json.dumps, POOLING_MODES))}")
    append_eos: bool = Field(description=BOOLEAN)
    normalize: bool = Field(description=BOOLEAN)
    max_seq_length: int = Field(description="an int of at least 2")


class AdapterFolderSettings(EncoderSettings):
    """An adapter folder's settings: the encoder's, plus what rebuilding it from its base needs."""

    base: str = Field(description="the base model: a shipped base such as smollm2-135m, or a checkpoint folder")
    keep_layers: int | None = Field(None, description="the number of decoder layers to keep (an int), or null")
    prompts: dict[str, str] = Field(
        default_factory=dict, description='an object of prompt names and templates, such as {"query": "..."}'
    )


Settings = TypeVar("Settings", bound=BaseModel)


def _json_kind(value: Any) -> str:
    return "null" if value is None else JSON_KINDS.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 3] + "..."


def _problems(error: ValidationError, raw: Any, schema: type[BaseModel]) -> list[str]:
    """One phrase per bad key (a union type reports each of its branches; the key is named once)."""
    problems: dict[str, str] = {}
    for item in error.errors():
        if not item["loc"]:
            return [f"holds a JSON {_json_kind(raw)} where an object of settings belongs"]
        key = str(item["loc"][0])
        if key in problems:
            continue
        if item["type"] == "extra_forbidden":
            problems[key] = f"has the unknown key {json.dumps(key)}"
            continue
        description = schema.model_fields[key].description
        if item["type"] == "missing":
            problems[key] = f"lacks {json.dumps(key)} ({description})"
        else:
            problems[key] = f"has {json.dumps(key)}: {_shown(raw[key])}, which is not {description}"
    return list(problems.values())


def read_json(path: str | os.PathLike) -> Any:
    """What the JSON file ``path`` holds, or a one-line ValueError naming it (not JSON, or not UTF-8)."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except ValueError as error:
        raise ValueError(f"{path} is not a JSON file ({error}); fix it, or save the model again") from None


def read_settings(path: str | os.PathLike, schema: type[Settings]) -> Settings:
    """The settings in the JSON file ``path``, checked against ``schema``; else a one-line ValueError
    naming the file, each bad key and the keys the file may hold."""
    raw = read_json(path)
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        keys = ", ".join(schema.model_fields)
        problems = "; ".join(_problems(error, raw, schema))
        raise ValueError(f"{path} {problems}; fix the file (its keys: {keys}), or save the model again") from None
