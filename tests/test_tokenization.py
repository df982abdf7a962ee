"""The vectorised tokenisation gives exactly what a plain per-text tokenizer call gives."""

from __future__ import annotations

import pytest
import torch

from bellm_st.prompts import DEFAULT_TEMPLATE, Template, template_for_prompt
from bellm_st.tokenization import tokenize_with_template

TEXTS = [
    "A man is playing a guitar.",
    "Children are playing football in the park while their parents watch.",
    "Ein Mann spielt Gitarre 🎸",
    "男人在弹吉他",
    " leading space",
    "trailing space ",
    "<s> looks special",
    "x",
]


def reference(tokenizer, texts, template: Template, append_eos: bool):
    """One tokenizer call per text and a per-token loop: slow and obviously right."""
    rows = []
    for text in texts:
        encoded = tokenizer(template.render(text), return_offsets_mapping=True)
        start, end = template.text_start, template.text_start + len(text)
        mask = [int(e > s and s < end and e > start) for s, e in encoded["offset_mapping"]]
        ids = list(encoded["input_ids"])
        if append_eos:
            ids, mask = ids + [tokenizer.eos_token_id], mask + [0]
        rows.append((ids, mask))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    attention, text_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for row, (ids, mask) in enumerate(rows):
        span = slice(length - len(ids), length) if tokenizer.padding_side == "left" else slice(0, len(ids))
        input_ids[row, span], attention[row, span], text_mask[row, span] = torch.tensor(ids), 1, torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention, "text_mask": text_mask}


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("append_eos", [False, True])
@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, "{text}", 'Instruct: x. {text} means:"'])
def test_batch_matches_the_per_text_reference(tiny_tokenizer, padding_side, append_eos, template):
    tiny_tokenizer.padding_side = padding_side
    try:
        parsed = Template.parse(template)
        features = tokenize_with_template(tiny_tokenizer, TEXTS, parsed, 512, append_eos)
        expected = reference(tiny_tokenizer, TEXTS, parsed, append_eos)
    finally:
        tiny_tokenizer.padding_side = "right"
    for key, value in expected.items():
        assert features[key].dtype == torch.long
        assert torch.equal(features[key], value), key


def test_only_the_long_text_is_truncated_and_rows_stay_aligned(tiny_tokenizer):
    template = template_for_prompt(DEFAULT_TEMPLATE, None)
    texts = ["A man is playing a guitar.", "guitar football kitchen " * 50, "Stocks fell."]
    features = tokenize_with_template(tiny_tokenizer, texts, template, 60, append_eos=True)
    lengths = features["attention_mask"].sum(1).tolist()
    short = reference(tiny_tokenizer, [texts[0], texts[2]], template, append_eos=True)
    assert lengths[1] == 60 and features["input_ids"][1, lengths[1] - 1] == tiny_tokenizer.eos_token_id
    assert lengths[0] == short["attention_mask"][0].sum() and lengths[2] == short["attention_mask"][1].sum()
    assert features["input_ids"][2, : lengths[2]].tolist() == short["input_ids"][1, : lengths[2]].tolist()


def test_a_tokenizer_left_padding_or_truncating_by_itself_is_reset(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.backend_tokenizer.enable_padding(length=64)
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    template = Template.parse(DEFAULT_TEMPLATE)
    features = tokenize_with_template(tokenizer, TEXTS[:2], template, 512)
    assert torch.equal(features["input_ids"], reference(tokenizer, TEXTS[:2], template, False)["input_ids"])


@pytest.mark.parametrize("append_eos", [False, True])
def test_flat_batches_without_the_text_mask_and_groups_by_length(tiny_tokenizer, append_eos):
    from bellm_st.tokenization import group_by_length, tokenize_flat

    template = Template.parse(DEFAULT_TEMPLATE)
    texts = TEXTS + ["a long text that has to be truncated " * 8]
    with_mask = tokenize_flat(tiny_tokenizer, texts, template, max_length=40, append_eos=append_eos)
    without = tokenize_flat(tiny_tokenizer, texts, template, max_length=40, append_eos=append_eos, with_text_mask=False)
    assert without.text_mask is None
    assert (without.ids == with_mask.ids).all() and (without.lengths == with_mask.lengths).all()
    assert with_mask.lengths.max() == 40  # the long text was cut to fit
    padded = tokenize_with_template(tiny_tokenizer, texts, template, max_length=40, append_eos=append_eos)
    seen = []
    for rows, ids, text_mask in group_by_length(with_mask):
        assert ids.shape == (len(rows), with_mask.lengths[rows[0]])
        for row, row_ids, row_mask in zip(rows, ids, text_mask):
            real = padded["attention_mask"][row].bool()
            assert row_ids.tolist() == padded["input_ids"][row][real].tolist()
            assert row_mask.astype(int).tolist() == padded["text_mask"][row][real].tolist()
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(texts)))
