"""Nested, stratified label-fraction subsets of a training split (1% / 10% / 100% of the labels, method.md 5).

How they are stored: every downstream manifest carries them in its top-level meta,
`meta["fractions"] = {"0.01": [ids], "0.1": [ids], "1.0": [ids]}` (ids of "training" items, in manifest order), with
`meta["fraction_seed"]`. A workflow selects its subset with `select_fraction(items, meta, fraction)` or
`load_fraction(manifest, fraction)`.

How they are drawn: items are grouped into strata (the label value, a multi-hot vector as a tuple, or whatever
`stratum_of` returns); inside each stratum the items are put in a seeded pseudo-random order that depends only on
(seed, id) through SHA-256, so the same ids give the same order on any machine, Python or NumPy version. Each fraction
takes a prefix of every stratum's order, so the 1% set is inside the 10% set, which is inside the full set. Stratum
sizes follow the stratum's share of the training split (largest remainder), never shrinking from one fraction to the
next; every fraction keeps at least one item.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)


def fraction_key(fraction: float) -> str:
    """The meta key of a fraction: "0.01", "0.1", "1.0" (Python's shortest float repr)."""
    return repr(float(fraction))


def seeded_order_key(seed: int, item_id: str) -> str:
    """A machine-independent pseudo-random sort key for `item_id` under `seed`."""
    return hashlib.sha256(f"{int(seed)}\x00{item_id}".encode("utf-8")).hexdigest()


def _default_stratum(label_key: str | None) -> Callable[[dict], Hashable]:
    def stratum(item: dict) -> Hashable:
        if label_key is None:
            return None
        value = item[label_key]
        if isinstance(value, (list, tuple)):
            return tuple(value)
        return value

    return stratum


def _check_fractions(fractions: Iterable[float]) -> list[float]:
    values = sorted(float(f) for f in fractions)
    if not values:
        raise ValueError("no label fractions given")
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate label fractions: {values}")
    bad = [f for f in values if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"label fractions must be in (0, 1]: {bad}")
    return values


def _allocate(stratum_sizes: Mapping[Hashable, int], fraction: float, floor: Mapping[Hashable, int]) -> dict:
    """Items per stratum for one fraction: proportional, largest remainder, never below `floor` (nesting)."""
    total = sum(stratum_sizes.values())
    target = min(total, max(1, round(fraction * total)))
    counts = {s: max(floor[s], math.floor(fraction * n)) for s, n in stratum_sizes.items()}
    remaining = target - sum(counts.values())
    if remaining > 0:
        # the strata whose exact share was cut most get the leftover items; ties by stratum order (deterministic)
        order = sorted(stratum_sizes, key=lambda s: (-(fraction * stratum_sizes[s] - counts[s]), repr(s)))
        for s in order:
            if remaining == 0:
                break
            if counts[s] < stratum_sizes[s]:
                counts[s] += 1
                remaining -= 1
    return counts


def nested_fraction_subsets(
    items: Sequence[dict],
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    label_key: str | None = "label",
    stratum_of: Callable[[dict], Hashable] | None = None,
) -> dict[float, list[str]]:
    """{fraction: ids} for nested, stratified subsets of `items` (each with a unique "id").

    label_key: the item field that defines the strata (None: no stratification); `stratum_of(item)` overrides it
    (e.g. "has at least one box" for detection, "mask is non-empty" for segmentation). Ids are returned in the
    order of `items`.
    """
    values = _check_fractions(fractions)
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
        raise ValueError(f"duplicate ids in the items: {duplicates[:5]}")
    stratum = stratum_of or _default_stratum(label_key)
    by_stratum: dict[Hashable, list[str]] = {}
    for item_id, item in zip(ids, items):
        by_stratum.setdefault(stratum(item), []).append(item_id)
    for members in by_stratum.values():
        members.sort(key=lambda i: seeded_order_key(seed, i))
    sizes = {s: len(m) for s, m in by_stratum.items()}
    floor = {s: 0 for s in sizes}
    subsets: dict[float, list[str]] = {}
    for fraction in values:
        counts = _allocate(sizes, fraction, floor)
        chosen = {i for s, members in by_stratum.items() for i in members[: counts[s]]}
        subsets[fraction] = [i for i in ids if i in chosen]
        floor = counts
    return subsets


def fractions_meta(subsets: Mapping[float, list[str]]) -> dict[str, list[str]]:
    """The manifest meta form of `nested_fraction_subsets`' result: {"0.01": [...], "0.1": [...], "1.0": [...]}."""
    return {fraction_key(f): list(ids) for f, ids in subsets.items()}


def select_fraction(items: Sequence[dict], meta: Mapping, fraction: float) -> list[dict]:
    """The training items of label fraction `fraction`, as stored in a manifest's meta (order of `items` kept).

    Raises ValueError when the manifest has no such fraction or when a listed id is not among `items`.
    """
    stored = meta.get("fractions") or {}
    by_value = {float(k): v for k, v in stored.items()}
    if float(fraction) not in by_value:
        raise ValueError(f"label fraction {fraction} is not stored in this manifest (has {sorted(by_value)})")
    wanted = set(by_value[float(fraction)])
    selected = [item for item in items if str(item["id"]) in wanted]
    if len(selected) != len(wanted):
        found = {str(item["id"]) for item in selected}
        missing = sorted(wanted - found)
        raise ValueError(f"{len(missing)} ids of label fraction {fraction} are not in the items, e.g. {missing[:5]}")
    return selected


def load_fraction(manifest_path: str, fraction: float, dataset_dir: str | None = None, check_files: bool = True):
    """The "training" items of a manifest restricted to label fraction `fraction` (paths resolved by load_manifest)."""
    from bundle.data.manifest import load_manifest, read_manifest

    meta = read_manifest(manifest_path).get("meta", {})
    items = load_manifest(manifest_path, "training", dataset_dir=dataset_dir, check_files=check_files)
    return select_fraction(items, meta, fraction)
