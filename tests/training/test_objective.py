"""The BeLLM loss: right parts for each batch shape, each equal to the sentence-transformers loss it wraps."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss, MultipleNegativesRankingLoss

from bellm_st.training.objective import BeLLMLoss

ANCHORS = ["A man is playing a guitar.", "The stock market fell sharply today.", "Children are playing football."]
POSITIVES = ["Someone plays an instrument.", "Stocks dropped today.", "Kids play soccer in the park."]
NEGATIVES = ["A woman is slicing an onion.", "Scientists found a new frog.", "The market rose today."]


def features(model, *columns):
    return [model.preprocess(list(column)) for column in columns]


@pytest.fixture()
def model(tiny_model):
    tiny_model.eval()
    return tiny_model


def test_triplets_give_contrastive_and_angle_equal_to_sentence_transformers_losses(model):
    loss = BeLLMLoss(model, contrastive_weight=1.0, angle_weight=0.5, cosent_weight=2.0)
    with torch.no_grad():
        parts = loss(features(model, ANCHORS, POSITIVES, NEGATIVES), None)
        contrastive = MultipleNegativesRankingLoss(model, scale=20.0)(features(model, ANCHORS, POSITIVES, NEGATIVES), None)
        angle = AnglELoss(model, scale=20.0)(features(model, ANCHORS, POSITIVES, NEGATIVES), None)
    assert set(parts) == {"contrastive", "angle", "cosent"}
    torch.testing.assert_close(parts["contrastive"], contrastive)
    torch.testing.assert_close(parts["angle"], 0.5 * angle)  # AnglE reads triplets as pairs labelled 1 / 0
    assert parts["cosent"] > 0


def test_scored_pairs_use_only_the_ranking_losses(model):
    loss = BeLLMLoss(model, contrastive_weight=1.0, angle_weight=1.0, cosent_weight=1.0)
    scores = torch.tensor([4.5, 0.5, 2.0])
    with torch.no_grad():
        parts = loss(features(model, ANCHORS, POSITIVES), scores)
        cosent = CoSENTLoss(model, scale=20.0)(features(model, ANCHORS, POSITIVES), scores)
    assert set(parts) == {"angle", "cosent"}
    torch.testing.assert_close(parts["cosent"], cosent)


def test_pairs_without_negatives_use_only_the_contrastive_loss(model):
    parts = BeLLMLoss(model)(features(model, ANCHORS, POSITIVES), None)
    assert set(parts) == {"contrastive"}


def test_a_batch_no_part_applies_to_is_an_error(model):
    loss = BeLLMLoss(model, contrastive_weight=1.0, angle_weight=0.0, cosent_weight=0.0)
    with pytest.raises(ValueError, match="angle_weight or cosent_weight"):
        loss(features(model, ANCHORS, POSITIVES), torch.tensor([1.0, 0.0, 0.5]))
