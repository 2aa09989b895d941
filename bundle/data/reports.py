"""Radiology report text: section extraction, the report text of method.md section 1, sentence splitting and cleaning.

Shared by every dataset: MIMIC-CXR free-text reports (upper-case headers such as "FINDINGS:"), the Indiana University
XML reports (`<AbstractText Label="FINDINGS">`), and the demo dataset built from the latter.

Cleaning (method.md 1): newlines become spaces; sentences end at "." and at numbered-list markers ("1.", "2)");
lower-case; only `\\w+` tokens are kept, joined by single spaces; sentences with fewer than 2 tokens are dropped;
a report with fewer than MIN_REPORT_TOKENS tokens in total is unusable (callers skip and count it).
Two documented refinements of the plain rule (both keep every real word):
- a "." between two digits ("2.5 cm") is a decimal point, not a sentence end;
- de-identification placeholders ("XXXX" in the IU reports, "___" in MIMIC-CXR) are removed as tokens: they stand
  for different hidden words in every report, so they carry no meaning a model could learn.
"""

from __future__ import annotations

import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

MIN_SENTENCE_TOKENS = 2
MIN_REPORT_TOKENS = 3

# Headers known to open a section anywhere in a line (reports flattened to one line still split correctly).
_KNOWN_HEADERS = (
    "FINDINGS AND IMPRESSION",
    "FINDINGS",
    "IMPRESSIONS",
    "IMPRESSION",
    "CONCLUSION",
    "INDICATION",
    "CLINICAL HISTORY",
    "HISTORY",
    "CLINICAL INFORMATION",
    "COMPARISONS",
    "COMPARISON",
    "TECHNIQUE",
    "EXAMINATION",
    "EXAM",
    "REASON FOR EXAMINATION",
    "REASON FOR EXAM",
    "RECOMMENDATIONS",
    "RECOMMENDATION",
    "NOTIFICATION",
    "ADDENDUM",
    "WET READ",
)
# Any other upper-case header at the start of a line ("PA AND LATERAL VIEWS OF THE CHEST:").
_LINE_HEADER = r"(?m:^)[ \t]*([A-Z][A-Z0-9 ,&/()\-]*[A-Z)]):"
_INLINE_HEADER = r"(?<![A-Za-z])(" + "|".join(re.escape(h) for h in _KNOWN_HEADERS) + r"):"
_HEADER_RE = re.compile(f"{_LINE_HEADER}|{_INLINE_HEADER}")
_FINAL_REPORT_RE = re.compile(r"^\s*FINAL REPORT\s*$", re.MULTILINE)
# Synonyms folded onto the two sections the method reads.
_SECTION_ALIASES = {"IMPRESSIONS": "IMPRESSION", "CONCLUSION": "IMPRESSION"}

_DECIMAL_POINT_RE = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_PLACEHOLDER = "\u0000"
# A list marker: a number followed by "." or ")" at the start or after whitespace, followed by whitespace or the end.
_LIST_MARKER_RE = re.compile(r"(?:^|(?<=\s))\d{1,2}[.)](?=\s|$)")
_TOKEN_RE = re.compile(r"\w+")
_DEID_RE = re.compile(r"^(?:x{2,}|_+)$")


class ReportParseError(ValueError):
    """A report file cannot be read or parsed; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------- sections
def _canonical_header(name: str) -> str:
    name = " ".join(name.split()).upper()
    return _SECTION_ALIASES.get(name, name)


def extract_sections(text: str) -> dict[str, str]:
    """Sections of a free-text report keyed by their upper-case header ("FINDINGS", "IMPRESSION", ...).

    Text before the first header goes under "PREAMBLE"; a header seen twice has its texts joined by a space;
    section texts have their whitespace collapsed; empty sections are kept as "" (callers decide).
    "IMPRESSIONS" and "CONCLUSION" are read as "IMPRESSION"; "FINDINGS AND IMPRESSION" fills both.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_sections expects str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _FINAL_REPORT_RE.sub("\n", text)
    sections: dict[str, str] = {}

    def add(name: str, body: str) -> None:
        body = " ".join(body.split())
        names = ("FINDINGS", "IMPRESSION") if name == "FINDINGS AND IMPRESSION" else (name,)
        for key in names:
            sections[key] = f"{sections[key]} {body}".strip() if sections.get(key) else body

    matches = list(_HEADER_RE.finditer(text))
    preamble = text[: matches[0].start()] if matches else text
    if preamble.strip():
        add("PREAMBLE", preamble)
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        add(_canonical_header(match.group(1) or match.group(2)), text[match.end() : end])
    return sections


def report_from_sections(sections: dict) -> str:
    """The report text of method.md 1: IMPRESSION + " " + FINDINGS; whichever exists alone; "" if neither.

    An IMPRESSION that does not end in "." / "!" / "?" is joined with ". " instead of " ", so that its last sentence
    does not run into the first FINDINGS sentence (the sections are separate texts).
    """
    parts = [" ".join(str(sections.get(key) or "").split()) for key in ("IMPRESSION", "FINDINGS")]
    parts = [p for p in parts if p]
    if len(parts) == 2 and not parts[0].endswith((".", "!", "?")):
        return f"{parts[0]}. {parts[1]}"
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------- sentences
def sentence_tokens(text: str, drop_deid: bool = True) -> list[list[str]]:
    """The cleaned sentences of `text` as token lists (each with >= MIN_SENTENCE_TOKENS tokens)."""
    if not text:
        return []
    text = unicodedata.normalize("NFKC", str(text)).replace("\n", " ").replace("\r", " ")
    text = _DECIMAL_POINT_RE.sub(_DECIMAL_PLACEHOLDER, text)
    text = _LIST_MARKER_RE.sub(".", text)  # a list marker ends the previous sentence
    sentences = []
    for chunk in text.split("."):
        chunk = chunk.replace(_DECIMAL_PLACEHOLDER, " ").lower()
        tokens = _TOKEN_RE.findall(chunk)
        if drop_deid:
            tokens = [t for t in tokens if not _DEID_RE.match(t)]
        if len(tokens) >= MIN_SENTENCE_TOKENS:
            sentences.append(tokens)
    return sentences


def split_sentences(text: str, drop_deid: bool = True) -> list[str]:
    """Cleaned, lower-case sentences of a report (tokens joined by single spaces), method.md 1."""
    return [" ".join(tokens) for tokens in sentence_tokens(text, drop_deid=drop_deid)]


def count_report_tokens(text: str) -> int:
    return sum(len(tokens) for tokens in sentence_tokens(text))


def is_usable_report(text: str) -> bool:
    """At least MIN_REPORT_TOKENS tokens survive the cleaning (method.md 1: shorter reports are dropped and counted)."""
    return count_report_tokens(text) >= MIN_REPORT_TOKENS


# ----------------------------------------------------------------------------------------------- IU XML reports
@dataclass
class IUReport:
    """One Indiana University (Open-i) report: `report_id` is the XML file's stem ("1" for 1.xml)."""

    report_id: str
    findings: str = ""
    impression: str = ""
    mesh_major: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The report text of method.md 1 (IMPRESSION + " " + FINDINGS)."""
        return report_from_sections({"IMPRESSION": self.impression, "FINDINGS": self.findings})


def parse_iu_report_xml(source, report_id: str | None = None) -> IUReport:
    """Parse one IU report XML given as a path or as bytes/str content.

    report_id defaults to the file's stem for a path, and to the `<IUXRId id=...>` for content.
    Raises ReportParseError naming the source for unreadable or malformed XML.
    """
    if isinstance(source, (str, Path)) and not (isinstance(source, str) and source.lstrip().startswith("<")):
        path = Path(source)
        name = str(path)
        try:
            content = path.read_bytes()
        except OSError as e:
            raise ReportParseError(f"{name}: cannot read the report XML ({e.strerror or e})") from e
        report_id = report_id if report_id is not None else path.stem
    else:
        content = source.encode("utf-8") if isinstance(source, str) else bytes(source)
        name = f"report {report_id}" if report_id is not None else "report XML content"
    try:
        root = ET.fromstring(content)
    except ET.ParseError as e:
        raise ReportParseError(f"{name}: malformed report XML ({e})") from e
    if report_id is None:
        node = root.find(".//IUXRId")
        if node is None or not node.get("id"):
            raise ReportParseError(f"{name}: no report id given and no <IUXRId id=...> in the XML")
        report_id = node.get("id")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = _canonical_header(node.get("Label") or "")
        body = " ".join("".join(node.itertext()).split())
        if label:
            sections[label] = f"{sections[label]} {body}".strip() if sections.get(label) else body
    mesh = [" ".join((m.text or "").split()) for m in root.iterfind("./MeSH/major")]
    images = [img.get("id") for img in root.iterfind("./parentImage") if img.get("id")]
    return IUReport(
        report_id=str(report_id),
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        mesh_major=[m for m in mesh if m],
        images=images,
        sections=sections,
    )
