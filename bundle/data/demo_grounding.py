"""Which report sentence names which drawn finding: the demo's grounding cases (manifests/grounding.json).

The phantom draws a finding from the report's MeSH tag, not from a sentence, so the sentence is found in the text:
the first cleaned report sentence (bundle/data/reports.split_sentences, the pretraining sentence split) that holds one
of the class's keywords and no negation before it ("no", "without", "negative for", "resolved", ...). A drawn mask
finding with no such sentence gives no grounding case (the tag had no affirmative sentence); the counts are in the
manifest's meta. The ground-truth region of a case is the label-map pixels of that class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bundle.data.reports import split_sentences

# class -> keyword stems, matched at a word start in the lower-case sentence
GROUNDING_KEYWORDS = {
    "pleural_effusion": ("effusion",),
    "lung_opacity": ("opacit", "airspace", "air space", "consolidat", "pneumonia", "infiltrat"),
    "atelectasis": ("atelecta",),
    "nodule_mass": ("nodul", "mass"),
    "calcified_granuloma": ("granulom", "calcified"),
    "pneumothorax": ("pneumothora",),
}
NEGATION = re.compile(r"\b(no|not|without|negative for|free of|resolved|resolution of|clear of|removed)\b")


def _keyword_position(sentence: str, keywords: Iterable[str]) -> int | None:
    hits = [m.start() for k in keywords for m in re.finditer(r"\b" + re.escape(k), sentence)]
    return min(hits) if hits else None


def affirmative_sentence(sentences: list[str], class_name: str) -> tuple[int, str] | None:
    """(index, sentence) of the first sentence naming `class_name` without a negation before the keyword."""
    for i, sentence in enumerate(sentences):
        pos = _keyword_position(sentence, GROUNDING_KEYWORDS[class_name])
        if pos is not None and not NEGATION.search(sentence[:pos]):
            return i, sentence
    return None


def grounding_phrases(report_text: str, mask_classes: Iterable[str], class_index: dict[str, int]) -> list[dict]:
    """One case per drawn mask class that has an affirmative sentence: {"text", "sentence_index", "class",
    "class_id"} in class-id order."""
    sentences = split_sentences(report_text)
    phrases = []
    for name in sorted(mask_classes, key=class_index.get):
        if name not in GROUNDING_KEYWORDS:
            continue
        found = affirmative_sentence(sentences, name)
        if found is not None:
            phrases.append({"text": found[1], "sentence_index": found[0], "class": name, "class_id": class_index[name]})
    return phrases
