"""Shared preparation helpers: CSV reading, allocation, grouped stratified splits, id checks, checksums."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from bundle.data.prepare.common import (
    PreparationError,
    SkipLog,
    allocate_counts,
    check_unique_ids,
    count_data_lines,
    ids_sha256,
    read_csv_rows,
    relative_path,
    seeded_sample,
    stratified_group_split,
)


def test_read_csv_strips_header_and_values_and_reads_gzip(tmp_path):
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("ImageId, EncodedPixels\n1.2.3, -1\n\n1.2.4, 5 6\n")
    assert list(read_csv_rows(path, ["ImageId", "EncodedPixels"])) == [
        (2, {"ImageId": "1.2.3", "EncodedPixels": "-1"}),
        (4, {"ImageId": "1.2.4", "EncodedPixels": "5 6"}),
    ]
    assert count_data_lines(path) == 3


def test_read_csv_errors_name_the_file_and_problem(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("a,b\n1,2,3\n")
    with pytest.raises(PreparationError, match="missing column"):
        list(read_csv_rows(path, ["a", "c"]))
    with pytest.raises(PreparationError, match=r"b.csv:2: 3 fields"):
        list(read_csv_rows(path, ["a"]))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PreparationError, match="empty file"):
        list(read_csv_rows(tmp_path / "empty.csv", ["a"]))


@pytest.mark.parametrize("n, expected", [(10, [7, 2, 1]), (4, [3, 1, 0]), (1, [1, 0, 0]), (20, [14, 3, 3])])
def test_allocate_counts_largest_remainder(n, expected):
    # 10 -> 7/1.5/1.5 -> 7,1,1 + 1 to the first tie; 4 -> 2.8/.6/.6 -> 2,0,0 + 2 by remainder
    assert list(allocate_counts(n, {"training": 0.7, "validation": 0.15, "test": 0.15}).values()) == expected


def test_grouped_split_is_stratified_deterministic_and_order_free():
    groups = {f"g{k:03d}": k % 3 == 0 for k in range(300)}  # 100 positive, 200 negative groups
    proportions = {"training": 0.7, "validation": 0.15, "test": 0.15}
    a = stratified_group_split(groups, proportions, seed=5)
    b = stratified_group_split(dict(reversed(list(groups.items()))), proportions, seed=5)
    assert a == b and set(a) == set(groups)
    for stratum, n in ((True, 100), (False, 200)):
        counts = [sum(1 for g, s in a.items() if groups[g] == stratum and s == split) for split in proportions]
        assert counts == [round(0.7 * n), round(0.15 * n), round(0.15 * n)]
    assert a != stratified_group_split(groups, proportions, seed=6)


def test_seeded_sample_is_a_prefix_of_one_order():
    ids = [f"x{k}" for k in range(50)]
    assert seeded_sample(ids, 5, 1) == seeded_sample(ids, 10, 1)[:5]
    assert len(set(seeded_sample(ids, 10, 1))) == 10


def test_duplicate_ids_across_splits_raise_with_the_ids():
    splits = {"training": [{"id": "a"}, {"id": "b"}], "validation": [{"id": "b"}], "test": []}
    with pytest.raises(PreparationError, match=r"b in \['training', 'validation'\]"):
        check_unique_ids(splits, "m")
    check_unique_ids({"training": [{"id": "a"}], "validation": [{"id": "b"}]}, "m")


def test_checksum_is_of_the_sorted_ids():
    assert ids_sha256(["b", "a"]) == hashlib.sha256(b"a\nb").hexdigest()


def test_skip_log_counts_and_strict_raises():
    log = SkipLog()
    for k in range(7):
        log.skip("image listed but missing", f"id{k}")
    assert log.as_dict() == {
        "total": 7,
        "reasons": {"image listed but missing": {"count": 7, "examples": ["id0", "id1", "id2", "id3", "id4"]}},
    }
    with pytest.raises(PreparationError, match="id9: malformed RLE"):
        SkipLog(strict=True).skip("malformed RLE", "id9")


def test_relative_path_is_posix_and_relative_to_out(tmp_path):
    assert relative_path(tmp_path / "src" / "a b" / "x.dcm", tmp_path / "out") == "../src/a b/x.dcm"
    assert relative_path(tmp_path / "files" / "x.jpg", tmp_path) == "files/x.jpg"


def test_split_proportions_leave_training_the_rest():
    from bundle.data.prepare.common import split_proportions

    assert split_proportions(validation=0.15, test=0.15) == pytest.approx(
        {"training": 0.7, "validation": 0.15, "test": 0.15}
    )
    for bad in ({"validation": 0.6, "test": 0.4}, {"validation": -0.1}):
        with pytest.raises(PreparationError, match="held-out fractions"):
            split_proportions(**bad)
