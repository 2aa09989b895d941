"""Shared pieces of the dataset preparation scripts: command line, CSV reading, the skip policy, deterministic
splits, manifest writing with label fractions, and the summary (stdout + OUT/manifests/summary_<dataset>.json).

Skip policy (docs/datasets.md): a record that cannot be turned into a correct item (image listed but missing, a
malformed box / RLE / annotation, a conflicting label) is left out of every manifest and counted under its reason;
the first few of each reason are logged with their ids. `--strict` turns the first skip into an error. Problems that
would make the whole output wrong (a missing column, an id in two splits, conflicting duplicate rows) always raise
PreparationError naming the file or record.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bundle.data.label_fractions import DEFAULT_FRACTIONS, fraction_key, nested_fraction_subsets, seeded_order_key

LOG = logging.getLogger("bundle.data.prepare")
SCRIPT_VERSION = "1.0.0"
SPLITS = ("training", "validation", "test")
MAX_EXAMPLES = 5


class PreparationError(ValueError):
    """The input cannot be prepared correctly; the message names the file or record and the reason."""


# ----------------------------------------------------------------------------------------------- command line
def make_parser(dataset: str, description: str) -> argparse.ArgumentParser:
    """The arguments every `scripts/prepare_<dataset>.py` shares; modules add their own."""
    parser = argparse.ArgumentParser(
        prog=f"prepare_{dataset}.py", description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--src", required=True, help="the dataset as downloaded from its owners (see docs/datasets.md)")
    parser.add_argument(
        "--out",
        required=True,
        help="output dataset_dir: manifests go to OUT/manifests/, generated masks to OUT/masks/; "
        "image paths in the manifests are relative to OUT",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and of the label-fraction subsets")
    parser.add_argument("--strict", action="store_true", help="stop at the first skipped record instead of counting it")
    parser.add_argument(
        "--check_decode",
        action="store_true",
        help="fully decode every image before writing the manifests (slow, parallel): a file whose "
        "header is intact but whose data is cut off is skipped and listed, instead of failing "
        "in training",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes for --check_decode (0: min(8, CPU count))")
    parser.add_argument("--log_level", default="INFO")
    return parser


def add_image_check_argument(parser: argparse.ArgumentParser) -> None:
    """For datasets whose images are only listed (JPG/PNG): checking existence is optional on slow file systems."""
    parser.add_argument(
        "--no_image_check",
        action="store_true",
        help="do not check that every listed image exists (faster on slow network file systems)",
    )


def run_main(
    prepare: Callable[[argparse.Namespace], dict], parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> int:
    """Parse, prepare, and turn a PreparationError into a one-line message and exit code 2."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        with logging_redirect_tqdm():  # log lines above the progress bar instead of through it
            prepare(args)
    except PreparationError as error:
        LOG.error("%s", error)
        return 2
    return 0


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def progress(iterable: Iterable, total: int | None = None, desc: str = "") -> Iterable:
    """A tqdm progress bar (rate and ETA on stderr) for long loops over records or files."""
    return tqdm(iterable, total=total, desc=desc, unit=" rec", mininterval=1.0, dynamic_ncols=True, file=sys.stderr)


# ----------------------------------------------------------------------------------------------- reading inputs
def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise PreparationError(f"{what} not found: {path}")
    return path


def find_one(directory: Path, patterns: Sequence[str], what: str) -> Path:
    """The single file in `directory` matching one of `patterns` (glob); an error when none or several match."""
    matches = sorted({p for pattern in patterns for p in directory.glob(pattern) if p.is_file()})
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "none"
        raise PreparationError(
            f"expected exactly one {what} in {directory} matching {list(patterns)}, found: {found}; "
            "name it explicitly with its command-line option"
        )
    return matches[0]


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file for the csv module; `.gz` files are decompressed on the fly (MIMIC-CXR ships .csv.gz)."""
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def count_data_lines(path: Path) -> int:
    """Lines after the header (progress-bar total; a fast byte count, not a CSV parse)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1)


def read_csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream (line number, row) from a CSV file; header names and values are stripped of surrounding spaces
    (SIIM's header is "ImageId, EncodedPixels"). A missing required column raises PreparationError."""
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise PreparationError(f"{path}: empty file, expected a header with columns {list(required)}") from None
        missing = [name for name in required if name not in header]
        if missing:
            raise PreparationError(f"{path}: missing column(s) {missing}; the header has {header}")
        for line_number, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise PreparationError(f"{path}:{line_number}: {len(values)} fields, the header has {len(header)}")
            yield line_number, {name: value.strip() for name, value in zip(header, values)}


# ----------------------------------------------------------------------------------------------- skips
class SkipLog:
    """Counts records left out, per reason, with a few example ids; `strict` raises at the first one."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def skip(self, reason: str, record: str, detail: str = "") -> None:
        message = f"{record}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise PreparationError(f"{message} [--strict]")
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(record + (f" ({detail})" if detail else ""))
            LOG.warning("skipped %s", message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "reasons": {r: {"count": c, "examples": self.examples[r]} for r, c in sorted(self.counts.items())},
        }


# ----------------------------------------------------------------------------------------------- splits
def allocate_counts(n: int, proportions: Mapping[str, float]) -> dict[str, int]:
    """Split n into integer counts proportional to `proportions` (largest remainder; ties in the given order)."""
    total = sum(proportions.values())
    exact = {name: n * p / total for name, p in proportions.items()}
    counts = {name: int(value) for name, value in exact.items()}
    names = list(proportions)
    by_remainder = sorted(names, key=lambda name: (-(exact[name] - counts[name]), names.index(name)))
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def split_proportions(**fractions: float) -> dict[str, float]:
    """{"training": rest, name: fraction, ...} for the held-out fractions given; they must leave training > 0."""
    held_out = {name: float(f) for name, f in fractions.items()}
    if any(not 0.0 <= f < 1.0 for f in held_out.values()) or sum(held_out.values()) >= 1.0:
        raise PreparationError(f"held-out fractions {held_out} must be in [0, 1) and sum to less than 1")
    return {"training": 1.0 - sum(held_out.values()), **held_out}


def stratified_group_split(
    group_strata: Mapping[str, Hashable], proportions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """{group: split name}: whole groups (patients, images) go to one split; inside each stratum the groups are
    ordered by a SHA-256 key of (seed, group) and cut by `proportions`, so the result depends only on the ids."""
    by_stratum: dict[Hashable, list[str]] = {}
    for group, stratum in group_strata.items():
        by_stratum.setdefault(stratum, []).append(group)
    assignment: dict[str, str] = {}
    for stratum in sorted(by_stratum, key=repr):
        groups = sorted(by_stratum[stratum], key=lambda g: seeded_order_key(seed, g))
        start = 0
        for split, count in allocate_counts(len(groups), proportions).items():
            for group in groups[start : start + count]:
                assignment[group] = split
            start += count
    return assignment


def seeded_sample(ids: Iterable[str], count: int, seed: int) -> list[str]:
    """`count` ids in the seeded pseudo-random order (machine independent)."""
    return sorted(ids, key=lambda i: seeded_order_key(seed, i))[:count]


def check_unique_ids(splits: Mapping[str, Sequence[dict]], manifest: str) -> None:
    """Every id appears once across all splits, else PreparationError listing the ids and their splits."""
    where: dict[str, list[str]] = {}
    for split, items in splits.items():
        for item in items:
            where.setdefault(str(item["id"]), []).append(split)
    duplicates = {i: s for i, s in where.items() if len(s) > 1}
    if duplicates:
        shown = ", ".join(f"{i} in {s}" for i, s in sorted(duplicates.items())[:MAX_EXAMPLES])
        raise PreparationError(f"{manifest}: {len(duplicates)} id(s) appear more than once across splits: {shown}")


def ids_sha256(ids: Iterable[str]) -> str:
    """SHA-256 of the sorted ids joined by newlines: identical splits give identical checksums on any machine."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode("utf-8")).hexdigest()


def relative_path(path: Path, out_dir: Path) -> str:
    """A manifest path: relative to OUT (the dataset_dir the workflows use), with forward slashes."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class ManifestOutput:
    """One manifest to write: OUT/manifests/<name>.json.

    classes_of(item) -> class names the item counts towards in the summary; stratum_of(item) -> the stratum of the
    label-fraction subsets (downstream manifests only; None for the pretraining manifest, which gets no fractions).
    """

    name: str
    task: str
    splits: dict[str, list[dict]]
    meta: dict
    classes_of: Callable[[dict], Iterable[str]] | None = None
    stratum_of: Callable[[dict], Hashable] | None = None
    with_fractions: bool = True


@dataclass
class PreparationReport:
    dataset: str
    source: str
    seed: int
    arguments: dict
    skips: SkipLog
    filtered: Counter = field(default_factory=Counter)  # records left out by design (lateral views, balancing)
    notes: dict = field(default_factory=dict)  # dataset-specific facts worth printing


def _split_summary(items: Sequence[dict], classes_of) -> dict:
    summary = {"count": len(items), "sha256": ids_sha256(item["id"] for item in items)}
    if classes_of is not None:
        summary["classes"] = dict(sorted(Counter(c for item in items for c in classes_of(item)).items()))
    return summary


def _decode_problem(path: str) -> str | None:
    """None when `path` decodes fully as a radiograph, else the reader's message (runs in worker processes)."""
    from bundle.data.image_io import load_radiograph

    try:
        load_radiograph(path)
    except Exception as e:  # every reader error is a reason to skip the record, named in the summary
        return f"{type(e).__name__}: {e}"
    return None


def decode_problems(paths: Sequence[str], workers: int = 1) -> dict[str, str]:
    """{path: problem} for the images that do not decode, with a progress bar; `workers` > 1 uses processes."""
    unique = sorted(set(paths))
    if workers <= 1 or len(unique) < 2:
        results = [_decode_problem(p) for p in progress(unique, total=len(unique), desc="decode check")]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(
                progress(
                    pool.map(_decode_problem, unique, chunksize=16),
                    total=len(unique),
                    desc=f"decode check ({workers} processes)",
                )
            )
    return {p: r for p, r in zip(unique, results) if r is not None}


def drop_undecodable(out_dir: Path, outputs: Sequence[ManifestOutput], skips: SkipLog, workers: int = 1) -> int:
    """Remove items whose image does not fully decode from every output (counted as skips); returns how many."""

    def resolved(image: str) -> str:  # normpath: OUT may not exist yet, so "OUT/../src" must not reach the OS
        return os.path.normpath(os.path.join(os.path.abspath(out_dir), image))

    paths = {
        resolved(item["image"])
        for output in outputs
        for items in output.splits.values()
        for item in items
        if isinstance(item.get("image"), str)
    }
    problems = decode_problems(sorted(paths), workers)
    dropped = 0
    for output in outputs:
        for split, items in output.splits.items():
            kept = []
            for item in items:
                problem = problems.get(resolved(item["image"])) if isinstance(item.get("image"), str) else None
                if problem:
                    skips.skip("image cannot be decoded (truncated or corrupt)", str(item["id"]), problem)
                    dropped += 1
                else:
                    kept.append(item)
            output.splits[split] = kept
    LOG.info("decode check: %d image file(s) checked, %d do not decode", len(paths), len(problems))
    return dropped


def write_outputs(
    out_dir: Path,
    report: PreparationReport,
    outputs: Sequence[ManifestOutput],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict:
    """Check, complete (meta, label fractions) and write every manifest, then the summary JSON; print the summary."""
    from bundle.data.manifest import write_manifest

    manifest_dir = Path(out_dir) / "manifests"
    if report.arguments.get("check_decode"):
        report.notes["decode_check_failures"] = drop_undecodable(
            out_dir, outputs, report.skips, int(report.arguments.get("workers") or min(8, os.cpu_count() or 1))
        )
    summary = {
        "dataset": report.dataset,
        "source": report.source,
        "seed": report.seed,
        "script_version": SCRIPT_VERSION,
        "arguments": report.arguments,
        "skipped": report.skips.as_dict(),
        "filtered": dict(sorted(report.filtered.items())),
        "notes": report.notes,
        "manifests": {},
    }
    prepared = []  # everything is checked before the first file is written: no half-written output on an error
    for output in outputs:
        splits = {name: list(output.splits.get(name, [])) for name in SPLITS}
        unknown = set(output.splits) - set(SPLITS)
        if unknown:
            raise PreparationError(f"{output.name}: unknown split names {sorted(unknown)}")
        check_unique_ids(splits, output.name)
        if not splits["training"]:
            raise PreparationError(f"{output.name}: the training split is empty (see the skipped records above)")
        meta = dict(
            output.meta,
            task=output.task,
            dataset=report.dataset,
            split_seed=report.seed,
            script_version=SCRIPT_VERSION,
            created_by=f"scripts/prepare_{report.dataset}.py",
        )
        entry = {
            "path": f"manifests/{output.name}.json",
            "task": output.task,
            "splits": {name: _split_summary(items, output.classes_of) for name, items in splits.items()},
        }
        if output.with_fractions:
            subsets = nested_fraction_subsets(
                splits["training"], fractions, seed=report.seed, label_key=None, stratum_of=output.stratum_of
            )
            meta["fractions"] = {fraction_key(f): ids for f, ids in subsets.items()}
            meta["fraction_seed"] = report.seed
            by_id = {item["id"]: item for item in splits["training"]}
            entry["fractions"] = {
                fraction_key(f): _split_summary([by_id[i] for i in ids], output.classes_of)
                for f, ids in subsets.items()
            }
        prepared.append((output.name, splits, meta))
        summary["manifests"][output.name] = entry
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for name, splits, meta in prepared:
        write_manifest(manifest_dir / f"{name}.json", splits, meta)
    summary_path = manifest_dir / f"summary_{report.dataset}.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(format_summary(summary, summary_path))
    return summary


def format_summary(summary: dict, summary_path: Path) -> str:
    lines = [
        f"== {summary['dataset']}: prepared from {summary['source']} (seed {summary['seed']}, "
        f"script {summary['script_version']}) =="
    ]
    for entry in summary["manifests"].values():
        lines.append(f"manifest {entry['path']} ({entry['task']})")
        rows = list(entry["splits"].items()) + [(f"fraction {k}", v) for k, v in entry.get("fractions", {}).items()]
        for split, s in rows:
            classes = "  ".join(f"{c}={n}" for c, n in s.get("classes", {}).items())
            lines.append(f"  {split:<15} {s['count']:>8}  sha256 {s['sha256'][:16]}  {classes}".rstrip())
    skipped = summary["skipped"]
    lines.append(f"skipped records: {skipped['total']}")
    for reason, info in skipped["reasons"].items():
        lines.append(f"  {reason}: {info['count']} (e.g. {', '.join(info['examples'])})")
    for reason, count in summary["filtered"].items():
        lines.append(f"left out by design: {reason}: {count}")
    for key, value in summary["notes"].items():
        lines.append(f"note: {key}: {value}")
    lines.append(f"summary written to {summary_path}")
    return "\n".join(lines)


def record_arguments(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}
