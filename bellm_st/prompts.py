"""Prompt templates with a ``{text}`` slot.

BeLLM wraps every sentence in a template such as
``The representative word for sentence {text} is:"`` so that the last token has been asked to
summarise the sentence. sentence-transformers only knows prompt *prefixes*; our module accepts
either a full template (contains ``{text}``) or a plain prefix, which is then put in front of the
text inside the model's own template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TEXT_SLOT = "{text}"
DEFAULT_TEMPLATE = 'The representative word for sentence {text} is:"'
# The query prompt ``bellm-st adapt`` gives BeLLM models (documents keep the model's template):
# the same "summarise in one word" ending, with the text announced as a query.
DEFAULT_QUERY_TEMPLATE = 'This query: "{text}" means in one word:"'


@dataclass(frozen=True)
class Template:
    """A template split around its single ``{text}`` slot."""

    prefix: str
    suffix: str

    @classmethod
    def parse(cls, template: str) -> Template:
        """Validate a template string and split it; the slot must appear exactly once."""
        if not isinstance(template, str):
            raise TypeError(f"a prompt template must be a string, got {type(template).__name__}")
        count = template.count(TEXT_SLOT)
        if count != 1:
            raise ValueError(
                f"prompt template {template!r} must contain the slot {TEXT_SLOT} exactly once, found {count}; "
                f"for example {DEFAULT_TEMPLATE!r}"
            )
        prefix, suffix = template.split(TEXT_SLOT)
        return cls(prefix=prefix, suffix=suffix)

    def render(self, text: str) -> str:
        return f"{self.prefix}{text}{self.suffix}"

    @property
    def text_start(self) -> int:
        """Character offset where the text begins in a rendered string."""
        return len(self.prefix)

    def __str__(self) -> str:
        return f"{self.prefix}{TEXT_SLOT}{self.suffix}"


def template_for_prompt(model_template: str, prompt: str | None) -> Template:
    """The template to use for one ``encode`` call.

    ``prompt`` is what sentence-transformers passes from ``prompt=``/``prompt_name=``/
    ``encode_query``: a full template replaces the model's, a plain prefix goes in front of the
    text inside the model's template, and nothing keeps the model's template.
    """
    if not prompt:
        return Template.parse(model_template)
    if TEXT_SLOT in prompt:
        return Template.parse(prompt)
    return Template.parse(model_template.replace(TEXT_SLOT, prompt + TEXT_SLOT))


def resolve_prompt(
    prompts: Mapping[str, str],
    default_prompt_name: str | None = None,
    prompt: str | None = None,
    prompt_name: str | None = None,
) -> str | None:
    """The prompt one ``encode`` call uses, chosen as sentence-transformers chooses it.

    Every path that encodes outside ``SentenceTransformer.encode`` (bulk encoding, the ONNX
    encoder, the command line, Ray actors) asks here, so an unknown name fails the same way
    everywhere: ``prompt`` as given, else the named prompt, else the model's default one.
    """
    if prompt is not None:
        return prompt
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return None
    if name not in prompts:
        raise ValueError(
            f"prompt_name={name!r} is not one of this model's prompts ({', '.join(sorted(prompts)) or 'none'}); "
            "pass one of them or a prompt string with prompt="
        )
    return prompts[name]
