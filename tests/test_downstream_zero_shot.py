"""Zero-shot classification: scores and metrics on synthetic embeddings with a known answer, prompt ensembling, the
prompt files, the 5x200-style selection, text embedding batched vs one by one, the embedding cache, and
configs/evaluate_zero_shot.yaml + evaluate_retrieval.yaml run end to end on tiny data."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigWorkflow
from test_classification_fixtures import write_tiny_classification_dataset
from test_pretrain_fixtures import ROOT, make_tiny_pretrain_dataset, tiny_overrides, tiny_text_model  # noqa: F401

from bundle.data.tokenization import TokenizeReportd
from bundle.downstream.embedding import cached, embed_texts
from bundle.downstream.zero_shot import (
    PromptFileError,
    class_embeddings,
    load_prompts,
    select_exclusive_items,
    zero_shot_metrics,
    zero_shot_scores,
)

torch.set_num_threads(1)


def test_images_near_their_class_vector_are_classified_exactly():
    torch.manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    truth = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    images = classes[truth] + 0.05 * torch.randn(7, 16)
    labels = torch.nn.functional.one_hot(truth, 3).float()
    scores = zero_shot_scores(images, classes)
    assert scores.shape == (7, 3) and scores.max() <= 1.0 + 1e-6
    out = zero_shot_metrics(scores, labels, ["a", "b", "c"])
    assert out["macro_auroc"] == pytest.approx(1.0) and out["accuracy_exclusive"] == pytest.approx(1.0)
    assert out["exclusive_items"] == 7 and out["chance_accuracy"] == pytest.approx(1 / 3)
    # swapping two class vectors swaps the answers: accuracy drops to the share of class "c"
    swapped = zero_shot_metrics(zero_shot_scores(images, classes[[1, 0, 2]]), labels, ["a", "b", "c"])
    assert swapped["accuracy_exclusive"] == pytest.approx(2 / 7)


def test_accuracy_only_counts_items_with_exactly_one_positive():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.2]])
    labels = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 1.0], [0, 0]])
    out = zero_shot_metrics(scores, labels, ["x", "y"])
    assert out["exclusive_items"] == 2 and out["accuracy_exclusive"] == pytest.approx(0.5)


def test_prompt_ensembling_averages_then_normalises():
    good, bad = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    prompts = [torch.stack([bad, good, good]), torch.stack([bad])]
    ensembled = class_embeddings(prompts, ensemble=True)
    torch.testing.assert_close(ensembled[0], torch.nn.functional.normalize(bad + 2 * good, dim=0))
    torch.testing.assert_close(class_embeddings(prompts, ensemble=False)[0], bad)


def test_prompt_files_are_checked(tmp_path):
    demo = load_prompts(ROOT / "configs" / "prompts" / "demo.yaml")
    from bundle.data.demo_classes import CLASS_NAMES

    assert list(demo) == list(CLASS_NAMES)  # every demo class, in the label order
    chexpert = load_prompts(ROOT / "configs" / "prompts" / "chexpert5.yaml")
    from bundle.data.prepare.chexpert import TASKS

    assert list(chexpert) == TASKS
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  cardiomegaly: []\n")
    with pytest.raises(PromptFileError, match="cardiomegaly"):
        load_prompts(bad)
    bad.write_text("classes:\n  heart_stuff: [enlarged heart]\n")
    with pytest.raises(PromptFileError, match="heart_stuff"):
        load_prompts(bad, class_names=["cardiomegaly"])
    with pytest.raises(PromptFileError, match="not found"):
        load_prompts(tmp_path / "missing.yaml")


def test_exclusive_selection_keeps_single_positive_items_per_class():
    names = ["a", "b", "c", "other"]
    items = [
        {"id": f"i{k}", "label": lab}
        for k, lab in enumerate([[1, 0, 0, 0]] * 5 + [[0, 1, 0, 1]] * 3 + [[1, 1, 0, 0]] * 4 + [[0, 0, 1, 0]] * 2)
    ]
    chosen = select_exclusive_items(items, names, ["a", "b", "c"], per_class=3, seed=1)
    counts = {c: sum(it["label"][i] for it in chosen) for i, c in enumerate(["a", "b", "c"])}
    assert counts == {"a": 3, "b": 3, "c": 2}  # "other" does not count; c has only 2
    assert all(sum(it["label"][:3]) == 1 for it in chosen)
    assert chosen == select_exclusive_items(items, names, ["a", "b", "c"], per_class=3, seed=1)


def test_texts_embed_the_same_batched_and_one_by_one(tiny_text_model):
    from monai.bundle import ConfigParser

    from bundle.networks.cmcgns import CMCGNS  # noqa: F401  (built through the config below)

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "pretrain.yaml"))
    for key, value in tiny_overrides(ROOT, tiny_text_model, ROOT / "unused").items():
        parser[key] = value
    torch.manual_seed(0)
    model = parser.get_parsed_content("network_def").eval()
    tokenizer = TokenizeReportd(tokenizer_dir=str(tiny_text_model), max_length=24)
    texts = ["small left pleural effusion", "the heart size is normal", "stable right upper lobe nodule"]
    batched = embed_texts(model, texts, tokenizer, batch_size=2)
    for i, text in enumerate(texts):
        single = embed_texts(model, [text], tokenizer)
        torch.testing.assert_close(batched["report"][i], single["report"][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched["report"][0], batched["report"][1])
    with pytest.raises(ValueError, match="no sentence"):
        embed_texts(model, ["Cardiomegaly."], tokenizer)  # one-word sentences are dropped by the report cleaning


def test_embedding_cache_reuses_only_the_same_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"v": torch.tensor([len(calls)])}

    path = tmp_path / "emb.pt"
    assert cached(path, "k1", compute)["v"].item() == 1
    assert cached(path, "k1", compute)["v"].item() == 1 and len(calls) == 1
    assert cached(path, "k2", compute)["v"].item() == 2  # another checkpoint or manifest: recomputed


def _workflow(configs, overrides, tmp_path):
    wf = ConfigWorkflow(
        config_file=[str(ROOT / "configs" / "pretrain.yaml")] + [str(ROOT / "configs" / c) for c in configs],
        meta_file=str(ROOT / "metadata.json"),
        workflow_type="infer",
    )
    for key, value in overrides.items():
        wf.parser[key] = value
    ckpt = tmp_path / "run" / "models" / "model.pt"
    if not ckpt.is_file():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(wf.parser.get_parsed_content("network_def").state_dict(), ckpt)
    wf.initialize()
    wf.run()
    return wf


@pytest.mark.slow
def test_evaluate_zero_shot_and_retrieval_configs_run_on_tiny_data(tmp_path, tiny_text_model):
    data = make_tiny_pretrain_dataset(tmp_path / "data", n_train=4, n_val=6)
    write_tiny_classification_dataset(tmp_path / "data", num_classes=3, side=40)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(
        "classes:\n  finding_0: [small left pleural effusion, pleural thickening is seen]\n"
        "  finding_2: [stable right upper lobe nodule]\n"
    )
    overrides = dict(tiny_overrides(data, tiny_text_model, tmp_path / "run"), eval_dir=str(tmp_path / "eval"))
    _workflow(["evaluate_zero_shot.yaml"], dict(overrides, prompts_file=str(prompts)), tmp_path)
    zs = json.loads((tmp_path / "eval" / "zero_shot_test.json").read_text())
    assert zs["items"] == 6 and zs["prompts_per_class"] == {"finding_0": 2, "finding_2": 1}
    assert set(zs["auroc"]) | set(zs["auroc_undefined"]) == {"finding_0", "finding_2"}
    assert (tmp_path / "eval" / "image_embeddings_test.pt").is_file()

    _workflow(["evaluate_retrieval.yaml"], dict(overrides, evaluate_split="validation"), tmp_path)
    rt = json.loads((tmp_path / "eval" / "retrieval_validation.json").read_text())
    assert rt["pairs"] == 6 and rt["chance_R@1"] == pytest.approx(1 / 6)
    assert 1 <= rt["i2t_median_rank"] <= 6 and 0 <= rt["i2t_R@1"] <= rt["i2t_R@5"] <= rt["i2t_R@10"] == 1.0
