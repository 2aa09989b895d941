"""Label-fraction subsets: nested, stratified, deterministic, and selectable from a manifest's meta."""

from __future__ import annotations

import json

import pytest

from bundle.data.label_fractions import fraction_key, nested_fraction_subsets, select_fraction


def items_with_labels(counts: dict) -> list[dict]:
    return [{"id": f"{label}-{i:04d}", "label": label} for label, n in counts.items() for i in range(n)]


def test_subsets_are_nested_stratified_and_sized():
    items = items_with_labels({0: 900, 1: 90, 2: 10})
    subsets = nested_fraction_subsets(items, (0.01, 0.1, 1.0), seed=3)
    small, medium, full = (set(subsets[f]) for f in (0.01, 0.1, 1.0))
    assert small <= medium <= full == {it["id"] for it in items}
    by_id = {it["id"]: it["label"] for it in items}
    # exact shares: 1% of 900/90/10 = 9/0.9/0.1 -> 9 + 1 (largest remainder) + 0; 10% = 90/9/1
    assert sorted(by_id[i] for i in small).count(0) == 9 and len(small) == 10
    assert [sorted(by_id[i] for i in medium).count(c) for c in (0, 1, 2)] == [90, 9, 1]


def test_close_fractions_stay_nested_on_uneven_strata():
    # 25 % -> 30 % of strata of 36 / 1 / 41: without the floor the largest-remainder share of the one-item stratum
    # moves, and the 30 % subset loses an item of the 25 % one
    items = items_with_labels({0: 36, 1: 1, 2: 41})
    for seed in range(3):
        subsets = nested_fraction_subsets(items, (0.25, 0.3, 1.0), seed=seed)
        assert set(subsets[0.25]) <= set(subsets[0.3]) <= set(subsets[1.0])
        assert (len(subsets[0.25]), len(subsets[0.3])) == (20, 23)  # round(0.25 * 78), round(0.3 * 78)


def test_multi_hot_labels_are_strata_and_order_follows_the_items():
    items = [{"id": f"i{k}", "label": [1.0, 0.0] if k % 4 else [0.0, 1.0]} for k in range(40)]
    subsets = nested_fraction_subsets(items, (0.25, 1.0), seed=0)
    chosen = subsets[0.25]
    # strata of 10 and 30 items: exact shares 2.5 and 7.5 -> 2 + 7, the one left over goes to the tie's first
    # stratum by repr, "(0.0, 1.0)" < "(1.0, 0.0)"
    assert len(chosen) == 10 and sum(int(i[1:]) % 4 == 0 for i in chosen) == 3
    assert chosen == [it["id"] for it in items if it["id"] in set(chosen)]  # manifest order kept


def test_choice_depends_on_seed_and_ids_not_on_input_order():
    items = items_with_labels({0: 50, 1: 50})
    a = nested_fraction_subsets(items, (0.1, 1.0), seed=1)[0.1]
    b = nested_fraction_subsets(list(reversed(items)), (0.1, 1.0), seed=1)[0.1]
    c = nested_fraction_subsets(items, (0.1, 1.0), seed=2)[0.1]
    assert set(a) == set(b) and set(a) != set(c)


def test_tiny_training_set_keeps_at_least_one_item():
    items = items_with_labels({0: 3, 1: 2})
    subsets = nested_fraction_subsets(items, seed=0)
    assert [len(subsets[f]) for f in (0.01, 0.1, 1.0)] == [1, 1, 5]


def test_custom_stratum_and_no_stratification():
    items = [{"id": str(k), "box_label": [0] * (k % 3)} for k in range(30)]
    by_box = nested_fraction_subsets(items, (0.1, 1.0), stratum_of=lambda it: bool(it["box_label"]))
    assert sum(1 for i in by_box[0.1] if int(i) % 3 == 0) == 1  # 10 negatives -> 1, 20 positives -> 2
    assert len(nested_fraction_subsets(items, (0.5,), label_key=None)[0.5]) == 15


@pytest.mark.parametrize("fractions", [(), (0.0, 1.0), (0.1, 0.1), (1.5,)])
def test_bad_fractions_raise(fractions):
    with pytest.raises(ValueError):
        nested_fraction_subsets(items_with_labels({0: 5}), fractions)


def test_duplicate_ids_raise():
    with pytest.raises(ValueError, match="duplicate"):
        nested_fraction_subsets([{"id": "a", "label": 0}, {"id": "a", "label": 1}])


def test_select_fraction_from_meta_round_trips_through_json():
    items = items_with_labels({0: 20, 1: 20})
    subsets = nested_fraction_subsets(items, seed=0)
    meta = json.loads(json.dumps({"fractions": {fraction_key(f): ids for f, ids in subsets.items()}}))
    assert set(meta["fractions"]) == {"0.01", "0.1", "1.0"}
    assert [it["id"] for it in select_fraction(items, meta, 0.1)] == subsets[0.1]
    assert len(select_fraction(items, meta, 1)) == 40
    with pytest.raises(ValueError, match="not stored"):
        select_fraction(items, meta, 0.5)
    with pytest.raises(ValueError, match="not in the items"):
        select_fraction(items[:5], meta, 1.0)
