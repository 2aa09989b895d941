"""The frozen text encoder's feature cache (bundle/networks/text_feature_cache.py): the features it returns are the
eval-mode model's for the same rows, whatever the batch mixes; the model runs only for rows not seen before; a hash
collision never returns another report's features; it is refused for a model that still trains; it is not state."""

from __future__ import annotations

import pytest
import torch

from bundle.networks.text_encoder import TextEncoder
from bundle.networks.text_feature_cache import TextFeatureCache
from tests.test_model_support import tiny_model_kwargs, tiny_text_model_dir


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return tiny_text_model_dir(tmp_path_factory.mktemp("tiny_bert_cache"))


def _reports(n: int, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    ids = torch.randint(5, 64, (n, length), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    ids[torch.arange(n), lengths - 1] = 3  # [SEP]
    return ids, mask, torch.zeros_like(ids)


class RowCounter:
    """Counts the rows the wrapped transformers model is run on."""

    def __init__(self, encoder):
        self.rows = []
        encoder.model.register_forward_pre_hook(
            lambda module, args, kwargs: self.rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
        )


def _reference(encoder, ids, mask, types):
    encoder.model.eval()
    with torch.no_grad():
        return encoder.model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state


def test_cached_features_equal_the_eval_mode_model_and_unseen_rows_alone_run(text_dir):
    encoder = TextEncoder(text_dir, freeze_layers=2, cache_features=True).train()  # training mode: dropout on
    ids, mask, types = _reports(10)
    expected = _reference(encoder, ids, mask, types)
    encoder.train()
    counter = RowCounter(encoder)

    first = encoder(ids[:6], mask[:6], types[:6])
    torch.testing.assert_close(first, expected[:6], atol=1e-5, rtol=1e-5)
    assert encoder.model.training  # the cache leaves the model's mode as it found it
    # a batch of 2 seen rows (out of order) and 3 new ones: the model runs on exactly the 3 new ones
    order = torch.tensor([7, 1, 8, 4, 9])
    mixed = encoder(ids[order], mask[order], types[order])
    torch.testing.assert_close(mixed, expected[order], atol=1e-5, rtol=1e-5)
    again = encoder(ids[order], mask[order], types[order])
    assert counter.rows == [6, 3]
    torch.testing.assert_close(again, mixed, atol=0, rtol=0)
    assert encoder.feature_cache.size == 9


def test_without_the_cache_a_training_mode_frozen_model_differs_by_dropout(text_dir):
    # why the cache runs the model in eval mode: in training mode the frozen model's output varies step to step
    encoder = TextEncoder(text_dir, freeze_layers=2).train()
    ids, mask, types = _reports(4)
    torch.manual_seed(0)
    a = encoder(ids, mask, types)
    b = encoder(ids, mask, types)
    assert not torch.allclose(a, b)


def test_identical_reports_in_one_batch_and_a_mask_difference(text_dir):
    encoder = TextEncoder(text_dir, freeze_layers=2, cache_features=True)
    ids, mask, types = _reports(3)
    ids[0, 8:], mask[0, 8:] = 0, 0  # report 0: 8 tokens
    ids = torch.cat([ids, ids[:1]])
    mask = torch.cat([mask, mask[:1]])
    types = torch.cat([types, types[:1]])
    # the same ids with one more attended position is another row (the model's output differs)
    mask[2] = mask[0]
    ids[2] = ids[0]
    mask[2, 8] = 1
    out = encoder(ids, mask, types)
    expected = _reference(encoder, ids, mask, types)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], out[3])
    assert not torch.allclose(out[0], out[2])


def test_a_hash_collision_is_a_miss_not_another_reports_features(text_dir):
    encoder = TextEncoder(text_dir, freeze_layers=2, cache_features=True)
    cache = encoder.feature_cache
    ids, mask, types = _reports(6, seed=3)
    width = 3 * ids.shape[1]
    cache._weights = torch.zeros(width, dtype=torch.long)  # every row hashes to 0
    encoder(ids[:3], mask[:3], types[:3])
    out = encoder(ids[3:], mask[3:], types[3:])  # same key as the cached rows, other reports
    torch.testing.assert_close(out, _reference(encoder, ids[3:], mask[3:], types[3:]), atol=1e-5, rtol=1e-5)


def test_searchsorted_lookup_against_a_dictionary():
    # the vectorised lookup against the obvious per-row dictionary, over many inserts and duplicate keys
    cache = TextFeatureCache()
    g = torch.Generator().manual_seed(5)
    reference = {}
    for step in range(20):
        rows = torch.randint(0, 4, (8, 3), generator=g)  # few distinct rows: many repeats across steps
        features, hit = cache.lookup(rows)
        for i, row in enumerate(rows.tolist()):
            assert bool(hit[i]) == (tuple(row) in reference), (step, i)
            if hit[i]:
                torch.testing.assert_close(features[i], reference[tuple(row)])
        new = (~hit).nonzero().squeeze(1)
        values = torch.randn(len(new), 2, 2, generator=g)
        for j, i in enumerate(new.tolist()):
            reference.setdefault(tuple(rows[i].tolist()), values[j])
        # a row twice among the new ones: the first stored copy wins, as in the dictionary
        cache.insert(rows[new], values)
    assert cache.size >= len(reference)


def test_max_rows_bounds_the_cache_and_later_rows_still_come_from_the_model(text_dir):
    encoder = TextEncoder(text_dir, freeze_layers=2, cache_features=True, cache_max_rows=4)
    counter = RowCounter(encoder)
    ids, mask, types = _reports(6)
    out = encoder(ids, mask, types)
    assert encoder.feature_cache.size == 4
    again = encoder(ids, mask, types)
    assert counter.rows == [6, 2]
    torch.testing.assert_close(again, out, atol=1e-5, rtol=1e-5)


def test_the_cache_is_refused_unless_every_layer_is_frozen(text_dir):
    with pytest.raises(ValueError, match="cache_text_features needs a fully frozen text model"):
        TextEncoder(text_dir, freeze_layers=1, cache_features=True)
    with pytest.raises(ValueError, match="fully frozen"):
        TextEncoder(text_dir, cache_features=True)


def test_cmcgns_with_the_cache_keeps_its_state_dict_and_trains_its_projections(text_dir):
    from bundle.networks.cmcgns import CMCGNS

    kwargs = tiny_model_kwargs(text_dir) | {"freeze_text_layers": 2}
    plain = CMCGNS(**kwargs)
    cached = CMCGNS(**kwargs, cache_text_features="true")  # a command-line string, as the bool decorator sees it
    assert cached.text_encoder.feature_cache is not None and plain.text_encoder.feature_cache is None
    assert list(plain.state_dict()) == list(cached.state_dict())
    ids, mask, types = _reports(2)
    tokens = cached.text_encoder(ids, mask, types)
    assert not tokens.requires_grad
    cached.local_text_projection(tokens).sum().backward()
    assert all(p.grad is not None for p in cached.local_text_projection.parameters())
    assert all(p.grad is None for p in cached.text_encoder.parameters())
