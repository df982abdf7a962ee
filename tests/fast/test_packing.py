"""Packed batches (texts end to end in rows) give the padded batches' embeddings and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device

from bellm_st.fast.packing import PackedRows, first_fit_rows, merge_packed, pack_rows
from bellm_st.module import BeLLMEncoder
from bellm_st.testing import CORPUS, TINY_ARCHITECTURES, tiny_backbone
from bellm_st.tokenization import TokenizedBatch

TEXTS = CORPUS + ["Stocks fell.", "A dog runs.", "Rain again today in the whole north of the country, and snow."]


def encoder_for(tokenizer, architecture="llama", layers=2, pooling="last", attn="sdpa", packing=None) -> BeLLMEncoder:
    backbone = tiny_backbone(architecture, attn_implementation=attn)
    return BeLLMEncoder(backbone=backbone, tokenizer=tokenizer, bidirectional_layers=layers, pooling=pooling,
                        batch_layout=None if packing is None else PackedRows(packing))


def embed(encoder: BeLLMEncoder, texts: list[str]) -> torch.Tensor:
    return encoder(encoder.preprocess(texts))["sentence_embedding"]


def test_first_fit_places_every_sequence_once_without_overlap():
    lengths = np.array([5, 9, 3, 7, 7, 2, 10, 1])
    row_of, offset_of, used = first_fit_rows(lengths, 10)
    cells = set()
    for index, length in enumerate(lengths):
        span = {(int(row_of[index]), int(offset_of[index]) + step) for step in range(length)}
        assert not span & cells
        assert offset_of[index] + length <= 10
        cells |= span
    assert used.tolist() == [sum(lengths[row_of == row]) for row in range(len(used))]
    assert len(used) == 5  # sum 44 needs at least 5 rows of 10


def test_pack_rows_layout_round_trips_to_the_padded_batch():
    lengths = np.array([3, 5, 2, 4])
    batch = TokenizedBatch(np.arange(10, 24), np.ones(14, dtype=bool), lengths)
    features = pack_rows(batch, row_length=8, pad_token_id=0)
    input_ids, positions = features["input_ids"], features["position_ids"]
    assert input_ids.shape[1] == 8
    assert (input_ids != 0).sum() == lengths.sum()
    unpacked = input_ids.flatten()[features["token_index"]] * features["attention_mask"]
    starts = np.cumsum(lengths) - lengths
    for text, (start, length) in enumerate(zip(starts, lengths)):
        assert unpacked[text, :length].tolist() == list(range(10 + start, 10 + start + length))
        assert features["attention_mask"][text].sum() == length
        # each text's position ids count from 0
        flat = features["token_index"][text, :length]
        assert positions.flatten()[flat].tolist() == list(range(length))


def test_rows_grow_to_fit_a_text_longer_than_the_row_length():
    batch = TokenizedBatch(np.arange(1, 13), None, np.array([10, 2]))
    features = pack_rows(batch, row_length=4, pad_token_id=0)
    assert features["input_ids"].shape == (2, 10)  # rows as long as the longest text; the short one gets its own
    assert "text_mask" not in features


@pytest.mark.parametrize("architecture", sorted(TINY_ARCHITECTURES))
@pytest.mark.parametrize("layers", [0, 2, 4])
def test_packed_embeddings_equal_padded_ones(tiny_tokenizer, architecture, layers):
    attn = "eager" if architecture == "gemma2" else "sdpa"  # transformers has no SDPA path for gemma2
    encoder = encoder_for(tiny_tokenizer, architecture, layers, pooling="mean", attn=attn)
    padded = embed(encoder, TEXTS)
    encoder.batch_layout = PackedRows(100)  # the tiny tokenizer makes 34-67 tokens per text
    features = encoder.preprocess(TEXTS)
    assert 1 < features["input_ids"].shape[0] < len(TEXTS)  # several texts per row, several rows
    assert torch.allclose(embed(encoder, TEXTS), padded, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["last", "mean", "mean_text"])
def test_packing_matches_for_every_pooling_and_attention(tiny_tokenizer, attn, pooling):
    encoder = encoder_for(tiny_tokenizer, "llama", 3, pooling=pooling, attn=attn)
    padded = embed(encoder, TEXTS)
    encoder.batch_layout = PackedRows(100)
    assert torch.allclose(embed(encoder, TEXTS), padded, atol=1e-5)


def test_a_packed_text_never_sees_its_row_neighbours(tiny_tokenizer):
    """Two different neighbours in the same row leave a text's embedding unchanged, in every layer."""
    encoder = encoder_for(tiny_tokenizer, "llama", 4, pooling="mean", packing=512)
    first = encoder.preprocess(["A man is playing a guitar.", "Stocks fell."])
    second = encoder.preprocess(["A man is playing a guitar.", "Scientists discovered a new species of frog."])
    assert first["input_ids"].shape[0] == second["input_ids"].shape[0] == 1  # one shared row
    with torch.no_grad():
        assert torch.allclose(encoder(first)["sentence_embedding"][0], encoder(second)["sentence_embedding"][0], atol=1e-6)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_gradients_equal_padded_gradients(tiny_tokenizer, checkpointing):
    encoder = encoder_for(tiny_tokenizer, "llama", 2, pooling="mean")
    encoder.train()
    if checkpointing:
        encoder.decoder.gradient_checkpointing_enable({"use_reentrant": False})
    target = torch.randn(len(TEXTS), encoder.get_embedding_dimension(), generator=torch.Generator().manual_seed(0))

    def gradients():
        encoder.zero_grad()
        (embed(encoder, TEXTS) * target).sum().backward()
        return {name: parameter.grad.clone() for name, parameter in encoder.named_parameters() if parameter.grad is not None}

    padded = gradients()
    encoder.batch_layout = PackedRows(100)
    packed = gradients()
    assert padded.keys() == packed.keys() and padded
    for name in padded:
        assert torch.allclose(packed[name], padded[name], atol=1e-5), name


def test_sentence_transformers_encode_gives_the_same_vectors_packed(tiny_model):
    expected = tiny_model.encode(TEXTS, convert_to_tensor=True)
    tiny_model[0].batch_layout = PackedRows(100)
    assert torch.allclose(tiny_model.encode(TEXTS, convert_to_tensor=True, batch_size=5), expected, atol=1e-5)
    tokens = tiny_model.encode(TEXTS[:3], output_value="token_embeddings")
    assert [len(item) for item in tokens] == [len(tiny_model[0].tokenizer(f'The representative word for sentence {text} is:"')["input_ids"]) for text in TEXTS[:3]]


def test_packing_is_not_saved_with_the_model(tiny_model, tmp_path):
    tiny_model[0].batch_layout = PackedRows(64)
    tiny_model.save(str(tmp_path))
    assert SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")[0].batch_layout is None


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "256"])
def test_bad_packing_row_length_is_refused(value):
    with pytest.raises(ValueError, match="row_length"):
        PackedRows(value)


def test_merged_packed_columns_give_each_column_its_own_embeddings(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2, pooling="mean_text", packing=100)
    columns = [TEXTS[:4], TEXTS[4:7], TEXTS[7:]]  # the last holds the 67-token text: wider rows than the others
    features = [encoder.preprocess(column) for column in columns]
    assert len({part["input_ids"].shape[1] for part in features}) == 1  # all fit in rows of 100...
    encoder.batch_layout = PackedRows(60)
    features = [encoder.preprocess(column) for column in columns]
    assert len({part["input_ids"].shape[1] for part in features}) == 2  # ...now one column's rows are wider
    merged = merge_packed(features, tiny_tokenizer.pad_token_id)
    separately = torch.cat([embed(encoder, column) for column in columns])
    assert torch.allclose(encoder(merged)["sentence_embedding"], separately, atol=1e-5)


def test_loss_on_packed_columns_equals_loss_on_padded_columns(tiny_model):
    from bellm_st.training.objective import BeLLMLoss

    loss = BeLLMLoss(tiny_model)
    columns = [TEXTS[:3], TEXTS[3:6], TEXTS[6:9]]
    padded = loss([tiny_model.preprocess(column) for column in columns], None)
    tiny_model[0].batch_layout = PackedRows(100)
    packed = loss([tiny_model.preprocess(column) for column in columns], None)
    assert padded.keys() == packed.keys() == {"contrastive", "angle"}
    for name in padded:
        assert torch.allclose(packed[name], padded[name], atol=1e-5), name


def test_merging_on_a_device_keeps_every_tensor_there(tiny_tokenizer):
    """Columns of different row widths are widened where they live (the loss merges on the GPU)."""
    encoder = encoder_for(tiny_tokenizer, "llama", 2, packing=60)
    features = [encoder.preprocess(column) for column in (TEXTS[:4], TEXTS[7:])]
    assert features[0]["input_ids"].shape[1] != features[1]["input_ids"].shape[1]
    on_meta = [batch_to_device(dict(part), torch.device("meta")) for part in features]
    merged = merge_packed(on_meta, tiny_tokenizer.pad_token_id)
    assert all(value.device.type == "meta" for value in merged.values() if isinstance(value, torch.Tensor))
    assert isinstance(merged["batch_layout"], PackedRows)
    assert merged["input_ids"].shape == merge_packed(features, tiny_tokenizer.pad_token_id)["input_ids"].shape


def test_packing_refuses_attention_that_would_mix_texts(tiny_tokenizer):
    encoder = encoder_for(tiny_tokenizer, "llama", 2, packing=100)
    features = encoder.preprocess(TEXTS)
    encoder.decoder.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="packed batches need attn_implementation"):
        encoder(features)
