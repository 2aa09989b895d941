"""TokenizeReportd (bundle/data/tokenization.py): ids, masks and the per-token sentence index (method.md 1).

References are independent of the transform's own path: the whole cleaned report is tokenised in ONE call with the
tokenizer's own special tokens and truncation, and each token's sentence comes from the tokenizer's character
offsets. A second, non-BERT tokenizer (a word-level one with <s> ... </s>, built here) checks "any HF tokenizer".
"""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset

from bundle.data.reports import split_sentences
from bundle.data.tokenization import TokenizeReportd, default_text_model_dir, load_tokenizer

# a manifest "report": IMPRESSION then FINDINGS, headers already removed (bundle.data.reports.report_from_sections)
REPORT = (
    "1. Mild cardiomegaly. 2. Small right pleural effusion\n The heart is mildly "
    "enlarged. There are no XXXX of pneumothorax. A 2.5 cm calcified granuloma in the right upper lobe. "
    "Degenerative changes of the thoracic spine."
)


@pytest.fixture(scope="module")
def minilm_transform():
    return TokenizeReportd(keys="report", tokenizer_dir=default_text_model_dir(), max_length=64)


def reference(tokenizer, text: str, max_length: int):
    """One tokenizer call on the joined sentences; sentence of each token from its character offsets."""
    sentences = split_sentences(text)
    joined = " ".join(sentences)
    starts, pos = [], 0
    for s in sentences:
        starts.append(pos)
        pos += len(s) + 1
    enc = tokenizer(
        joined,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        padding="max_length",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    index = []
    for (a, _end), special, mask in zip(enc["offset_mapping"], enc["special_tokens_mask"], enc["attention_mask"]):
        if special or not mask:
            index.append(-1)
        else:
            index.append(sum(1 for st in starts if st <= a))
    return enc["input_ids"], enc["attention_mask"], index


def test_outputs_match_a_single_call_reference(minilm_transform):
    out = minilm_transform({"report": REPORT, "id": "r1"})
    ids, mask, index = reference(minilm_transform.tokenizer, REPORT, 64)
    for key in ("input_ids", "attention_mask", "token_type_ids", "sentence_index"):
        assert out[key].dtype == torch.long and out[key].shape == (64,)
    assert out["input_ids"].tolist() == ids
    assert out["attention_mask"].tolist() == mask
    assert out["sentence_index"].tolist() == index
    assert out["token_type_ids"].tolist() == [0] * 64
    assert out["num_sentences"] == len(split_sentences(REPORT)) == 5  # the newline joins two sentences (method.md 1)
    assert out["report"] == REPORT and out["id"] == "r1"  # the item keeps its other keys


def test_cls_sep_and_padding_carry_minus_one(minilm_transform):
    out = minilm_transform({"report": "No acute disease. Heart size normal."})
    tok = minilm_transform.tokenizer
    n = int(out["attention_mask"].sum())
    assert out["input_ids"][0] == tok.cls_token_id and out["input_ids"][n - 1] == tok.sep_token_id
    assert out["sentence_index"][0] == -1 and out["sentence_index"][n - 1] == -1
    assert (out["sentence_index"][n:] == -1).all() and (out["input_ids"][n:] == tok.pad_token_id).all()
    words = tok.convert_ids_to_tokens(out["input_ids"][1 : n - 1].tolist())
    assert words == ["no", "acute", "disease", "heart", "size", "normal"]
    assert out["sentence_index"][1 : n - 1].tolist() == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("max_length", [8, 12, 17, 30])
def test_truncation_keeps_the_index_consistent(minilm_transform, max_length):
    t = TokenizeReportd(tokenizer_dir=minilm_transform.tokenizer_dir, max_length=max_length)
    long_report = REPORT + " " + " ".join(f"Finding number {i} is stable." for i in range(40))
    out = t({"report": long_report})
    ids, mask, index = reference(t.tokenizer, long_report, max_length)
    assert out["input_ids"].tolist() == ids and out["sentence_index"].tolist() == index
    assert int(out["attention_mask"].sum()) == max_length  # full: the report is longer than the limit
    assert out["input_ids"][-1] == t.tokenizer.sep_token_id  # [SEP] survives truncation
    content = out["sentence_index"][1:-1]
    assert content.min() == 1 and (content.diff() >= 0).all()  # 1-based, non-decreasing, no gaps
    assert set(content.tolist()) == set(range(1, int(content.max()) + 1))
    assert out["num_sentences"] == int(content.max())  # a sentence cut away entirely is not counted


def test_report_that_reduces_to_nothing_gives_zero_sentences(minilm_transform):
    tok = minilm_transform.tokenizer
    for text in ("", "XXXX. XXXX.", "Normal. Clear.", None):
        out = minilm_transform({"report": text})
        assert out["num_sentences"] == 0
        assert out["input_ids"][:2].tolist() == [tok.cls_token_id, tok.sep_token_id]
        assert int(out["attention_mask"].sum()) == 2
        assert (out["sentence_index"] == -1).all()


def test_non_ascii_and_unknown_characters_stay_in_their_sentence(minilm_transform):
    out = minilm_transform({"report": "Rückenlage ohne Erguss. Hérnie hiatale ✓✓ visible."})
    n = int(out["attention_mask"].sum())
    index = out["sentence_index"][1 : n - 1].tolist()
    assert index[0] == 1 and index[-1] == 2 and sorted(index) == index
    assert out["num_sentences"] == 2


def test_non_string_report_names_the_item(minilm_transform):
    with pytest.raises(TypeError, match="item x7"):
        minilm_transform({"report": 3.5, "id": "x7"})


def test_default_collation_stacks_a_batch(minilm_transform):
    data = [{"report": REPORT, "id": "a"}, {"report": "No acute disease.", "id": "b"}]
    batch = next(iter(DataLoader(Dataset(data, transform=minilm_transform), batch_size=2)))
    assert batch["input_ids"].shape == (2, 64) and batch["sentence_index"].shape == (2, 64)
    assert batch["num_sentences"].tolist() == [5, 1]


def test_a_non_bert_tokenizer_with_other_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {
        w: i
        for i, w in enumerate(
            [
                "<pad>",
                "<s>",
                "</s>",
                "<unk>",
                "heart",
                "size",
                "normal",
                "no",
                "effusion",
                "is",
                "seen",
                "mild",
                "cardiomegaly",
            ]
        )
    }
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(str(tmp_path))
    t = TokenizeReportd(tokenizer_dir=str(tmp_path), max_length=12)
    out = t({"report": "Heart size normal. No effusion is seen. Mild cardiomegaly."})
    assert out["input_ids"].tolist() == [1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2, 0]
    assert out["sentence_index"].tolist() == [-1, 1, 1, 1, 2, 2, 2, 2, 3, 3, -1, -1]
    assert out["num_sentences"] == 3
    assert load_tokenizer(str(tmp_path)).pad_token_id == 0


def test_missing_tokenizer_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TokenizeReportd(tokenizer_dir=str(tmp_path / "nowhere"))
