"""The bad-input and fault catalogue of docs/reliability.md: each case asserts the exact behaviour the policy table
promises (which error, naming what) for one bad input, manifest, option or simulated kill.

Cases that need a workflow use the tiny text model / datasets of the other test modules; everything else calls the
bundle function the config calls. Kept fast: the whole module runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow
from test_classification_fixtures import CONFIGS, LOGGING, META, write_tiny_classification_dataset
from test_classification_fixtures import tiny_overrides as classification_overrides
from test_pretrain_fixtures import (  # noqa: F401
    ROOT,
    make_tiny_pretrain_dataset,
    minilm_dir,
    tiny_dataset,
    tiny_text_model,
)
from test_pretrain_fixtures import tiny_overrides as pretrain_overrides

from bundle.data.manifest import ManifestError, load_manifest, write_manifest
from bundle.downstream.class_checks import (
    CheckpointMismatchError,
    DownstreamCheckpointMeta,
    check_classification_labels,
    classification_class_names,
)
from bundle.engines.checkpointing import (
    AtomicCheckpointSaver,
    ResumeCheckpointLoader,
    ResumeCheckpointSaver,
    RunSettings,
    StageBestCheckpointSaver,
    remove_stale_temp_files,
)
from bundle.engines.options import BooleanOptionError, as_bool, bool_arguments
from bundle.engines.preflight import (
    PreflightError,
    ResumeCheckpointError,
    TextModelDirError,
    check_pretrain_run,
    check_text_model_dir,
    check_writable_dir,
)

torch.set_num_threads(1)
PRETRAIN = str(ROOT / "configs" / "pretrain.yaml")


def cause(error: BaseException) -> BaseException:
    """The bundle's own error inside MONAI's RuntimeError('Failed to evaluate ...') wrappers."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def raises_from_config(error_type, match: str, call):
    with pytest.raises(Exception) as info:
        call()
    error = cause(info.value)
    assert isinstance(error, error_type), repr(info.value)
    assert match in str(error), str(error)
    return error


def pretrain_items(n: int, report: str = "Heart size is normal. Lungs are clear.") -> list[dict]:
    return [{"id": f"p{i}", "image": f"/x/p{i}.png", "report": report} for i in range(n)]


# ----------------------------------------------------------------------------------------------- 1. boolean ids
@pytest.mark.parametrize(
    "text,expected",
    [
        ("true", True),
        ("False", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("NO", False),
        (True, True),
        (0, False),
    ],
)
def test_boolean_words_parse(text, expected):
    assert as_bool(text, "resume") is expected


def test_a_non_boolean_word_names_the_id():
    with pytest.raises(BooleanOptionError, match=r"resume must be a boolean .* got 'maybe'"):
        as_bool("maybe", "resume")


def test_constructor_bool_arguments_are_parsed_and_named():
    @bool_arguments
    class Model:
        def __init__(self, width: int = 2, sync: bool = True):
            self.width, self.sync = width, sync

    assert Model(3, "false").sync is False and Model(sync="yes").sync is True and Model().width == 2
    with pytest.raises(BooleanOptionError, match="Model argument sync"):
        Model(sync="sometimes")


def test_cmcgns_switches_go_through_bool_arguments():
    from bundle.networks.cmcgns import CMCGNS

    assert hasattr(CMCGNS.__init__, "__wrapped__")  # the decorator, which keeps the signature for the config test


def test_resume_false_on_the_command_line_disables_the_resume_loader(tmp_path):
    # `--resume false` reaches the config as the string "false"
    wf = ConfigWorkflow(
        config_file=PRETRAIN, meta_file=META, workflow_type="train", resume="false", ckpt_dir=str(tmp_path)
    )
    assert wf.parser.get_parsed_content("train#handlers#0#_disabled_") is True
    wf = ConfigWorkflow(
        config_file=PRETRAIN, meta_file=META, workflow_type="train", resume="true", ckpt_dir=str(tmp_path)
    )
    assert wf.parser.get_parsed_content("train#handlers#0#_disabled_") is False


def test_deterministic_true_string_switches_deterministic_algorithms_on():
    wf = ConfigWorkflow(config_file=PRETRAIN, meta_file=META, workflow_type="train", deterministic="true")
    try:
        wf.parser.get_parsed_content("initialize#1")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_every_boolean_id_of_the_configs_is_read_through_as_bool():
    # the top-level ids whose default is a boolean, and every place a config reads them
    uses = []
    names = ("pretrain.yaml", "multi_gpu_pretrain.yaml", "classification.yaml", "evaluate_pretrain.yaml")
    for name in names + ("evaluate_zero_shot.yaml",):
        text = (ROOT / "configs" / name).read_text()
        for flag in ("@resume", "@deterministic", "@amp", "@prompt_ensemble"):
            start = 0
            while (i := text.find(flag, start)) >= 0:
                start = i + 1
                if text[i + len(flag)] in "_#":  # @resume_checkpoint, @amp_dtype
                    continue
                uses.append((name, flag, text[max(0, i - 8) : i] == "as_bool("))
    assert len(uses) >= 11 and all(wrapped for *_, wrapped in uses), [u for u in uses if not u[2]]
    assert ("evaluate_zero_shot.yaml", "@prompt_ensemble", True) in uses


# ----------------------------------------------------------------------------------------------- 2. checkpoints
class _StagedLinear(torch.nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.stage = 1


def _validation_engine(value: float, epoch: int) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"val_loss": value}
    engine.state.epoch = epoch
    return engine


def test_best_saver_resumes_when_a_kill_removed_the_old_best_before_writing_the_new(tmp_path):
    model = _StagedLinear()
    first = StageBestCheckpointSaver(1, model, str(tmp_path), {"model": model})
    first.metrics_completed(_validation_engine(0.9, 1))
    tracking = first.state_dict()
    os.remove(first.path)  # killed between "remove the previous best" and "write the new one"
    resumed = StageBestCheckpointSaver(1, model, str(tmp_path), {"model": model})
    resumed.load_state_dict(tracking)
    with torch.no_grad():
        model.weight.fill_(7.0)
    resumed.metrics_completed(_validation_engine(0.5, 2))  # MONAI's saver: FileNotFoundError here
    assert torch.equal(torch.load(resumed.path, weights_only=True)["weight"], torch.full((2, 2), 7.0))
    assert resumed.best_value() == pytest.approx(0.5)


def test_a_kill_while_writing_a_best_checkpoint_keeps_the_previous_one_whole(tmp_path, monkeypatch):
    model = _StagedLinear()
    with torch.no_grad():
        model.weight.fill_(1.0)
    saver = StageBestCheckpointSaver(1, model, str(tmp_path), {"model": model})
    saver.metrics_completed(_validation_engine(0.9, 1))
    real_save = torch.save

    def killed_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", killed_save)
    with torch.no_grad():
        model.weight.fill_(2.0)
    with pytest.raises(KeyboardInterrupt):
        saver.metrics_completed(_validation_engine(0.5, 2))
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(saver.path, weights_only=True)["weight"], torch.ones(2, 2))
    assert sorted(os.listdir(tmp_path)) == ["stage1_best.pt"]


def test_temp_files_of_killed_writers_are_removed_when_a_saver_starts(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"last.pt.tmp.{dead.pid}").write_bytes(b"partial")
    (tmp_path / f"stage1_best.pt.tmp.{dead.pid}").write_bytes(b"partial")
    (tmp_path / f"model.pt.tmp.{os.getpid()}").write_bytes(b"being written")  # a live writer: left alone
    (tmp_path / "notes.tmp.txt").write_text("not ours")
    saver = ResumeCheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)})
    saver.attach(Engine(lambda e, b: None))
    assert sorted(os.listdir(tmp_path)) == [f"model.pt.tmp.{os.getpid()}", "notes.tmp.txt"]
    assert remove_stale_temp_files(str(tmp_path / "missing")) == []


def test_a_nan_validation_is_never_the_best_checkpoint(tmp_path):
    model = _StagedLinear()
    saver = StageBestCheckpointSaver(1, model, str(tmp_path), {"model": model})
    saver.metrics_completed(_validation_engine(float("nan"), 1))
    assert not os.path.exists(saver.path) and saver.best_value() is None
    with torch.no_grad():
        model.weight.fill_(3.0)
    saver.metrics_completed(_validation_engine(1.25, 2))
    assert saver.best_value() == pytest.approx(1.25)
    assert torch.equal(torch.load(saver.path, weights_only=True)["weight"], torch.full((2, 2), 3.0))


def test_the_classification_saver_writes_atomically_under_its_fixed_name(tmp_path):
    model = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"model": model},
        save_key_metric=True,
        key_metric_name="val_auroc",
        key_metric_filename="model.pt",
    )
    engine = Engine(lambda e, b: None)
    for epoch, auroc in ((1, 0.6), (2, float("nan")), (3, 0.7)):
        engine.state.metrics, engine.state.epoch = {"val_auroc": auroc}, epoch
        saver.metrics_completed(engine)
    assert os.listdir(tmp_path) == ["model.pt"]
    assert saver._key_metric_checkpoint._saved[-1].priority == pytest.approx(0.7)


def _resume_engine(epoch_length: int) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.epoch_length, engine.state.max_epochs = epoch_length, 4
    return engine


def test_resume_with_another_batch_size_is_refused(tmp_path):
    saver = ResumeCheckpointSaver(
        str(tmp_path), {"model": torch.nn.Linear(1, 1), "run_settings": RunSettings(batch_size=4, world_size=1)}
    )
    writer = _resume_engine(3)
    saver.attach(writer)
    writer.state.iteration, writer.state.epoch = 3, 1
    saver.save(writer)
    # 12 items at batch 6: 2 iterations per epoch instead of 3
    loader = ResumeCheckpointLoader(
        saver.path, {"model": torch.nn.Linear(1, 1), "run_settings": RunSettings(batch_size=6, world_size=1)}
    )
    loader.attach(_resume_engine(2))
    with pytest.raises(ResumeCheckpointError, match="written with 3 iterations per epoch, this run has 2"):
        loader(loader.load_dict["trainer"])
    # same epoch length, other batch size (e.g. 11 items at batch 4 or 5): the stored settings catch it
    loader = ResumeCheckpointLoader(
        saver.path, {"model": torch.nn.Linear(1, 1), "run_settings": RunSettings(batch_size=5, world_size=1)}
    )
    loader.attach(_resume_engine(3))
    with pytest.raises(ResumeCheckpointError, match="batch_size: 4 in the checkpoint, 5 now"):
        loader(loader.load_dict["trainer"])


def test_a_truncated_resume_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"PK\x03\x04 cut off")
    loader = ResumeCheckpointLoader(str(path), {"model": torch.nn.Linear(1, 1)})
    loader.attach(_resume_engine(3))
    with pytest.raises(ResumeCheckpointError, match=f"{path} cannot be read"):
        loader(loader.load_dict["trainer"])


# ----------------------------------------------------------------------------------------------- 3. split leakage
def _manifest(tmp_path: Path, splits: dict, meta: dict | None = None) -> Path:
    for items in splits.values():
        for item in items:
            (tmp_path / item["image"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / item["image"]).write_bytes(b"")
    path = tmp_path / "manifests" / "m.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(splits, meta=meta or {})))
    return path


def test_the_same_id_in_training_and_test_is_refused(tmp_path):
    path = _manifest(
        tmp_path,
        {"training": [{"id": "a", "image": "i/a.png"}], "validation": [], "test": [{"id": "a", "image": "i/a2.png"}]},
    )
    with pytest.raises(ManifestError, match="id a in training and test"):
        load_manifest(path, "training")


def test_the_same_image_in_training_and_validation_is_refused(tmp_path):
    path = _manifest(
        tmp_path,
        {
            "training": [{"id": "a", "image": "i/a.png"}],
            "validation": [{"id": "b", "image": "i/../i/a.png"}],
            "test": [],
        },
    )
    with pytest.raises(ManifestError, match=r"image .*i/a.png in training \(id a\) and validation \(id b\)"):
        load_manifest(path, "validation")


def test_split_overlap_allowed_explicitly_in_the_manifest_or_by_argument(tmp_path):
    splits = {"training": [{"id": "a", "image": "i/a.png"}], "validation": [{"id": "a", "image": "i/a.png"}]}
    path = _manifest(tmp_path, splits, meta={"allow_split_overlap": True})
    assert [it["id"] for it in load_manifest(path, "validation")] == ["a"]
    path = _manifest(tmp_path, splits)
    assert [it["id"] for it in load_manifest(path, "training", allow_split_overlap=True)] == ["a"]


# ----------------------------------------------------------------------------------------------- 4. class order
def test_a_checkpoint_with_another_class_order_is_refused():
    meta = DownstreamCheckpointMeta("multilabel", ["b", "a", "c"])
    with pytest.raises(
        CheckpointMismatchError,
        match=r"classes \['a', 'b', 'c'\]; the manifest has the same "
        r"classes in another order: \['b', 'a', 'c'\]",
    ):
        meta.check({"task": "multilabel", "class_names": ["a", "b", "c"]}, "model.pt")
    with pytest.raises(CheckpointMismatchError, match="trained for task 'multiclass', this run is 'multilabel'"):
        meta.check({"task": "multiclass", "class_names": ["b", "a", "c"]}, "model.pt")


@pytest.mark.slow
def test_evaluating_on_a_manifest_with_reordered_classes_fails(tmp_path):
    data = tmp_path / "data"
    manifest = write_tiny_classification_dataset(data, "multilabel", 3)
    out = tmp_path / "run"
    train = ConfigWorkflow(
        config_file=CONFIGS,
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="train",
        **classification_overrides(data, out, max_epochs=1),
    )
    train.initialize()
    train.run()
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["downstream_meta"] == {"task": "multilabel", "class_names": ["finding_0", "finding_1", "finding_2"]}
    content = json.loads(manifest.read_text())
    content["meta"]["class_names"] = ["finding_1", "finding_0", "finding_2"]
    manifest.write_text(json.dumps(content))
    evaluate = ConfigWorkflow(
        config_file=CONFIGS + [str(ROOT / "configs" / "evaluate_classification.yaml")],
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="infer",
        **classification_overrides(data, out, eval_dir=str(tmp_path / "eval")),
    )
    evaluate.initialize()
    raises_from_config(CheckpointMismatchError, "same classes in another order", evaluate.run)
    assert not (tmp_path / "eval" / "metrics.csv").exists()


# ----------------------------------------------------------------------------------------------- 6. labels
@pytest.mark.parametrize(
    "task,num_classes,label,reason",
    [
        ("multilabel", 3, [1.0, -1.0, 0.0], "entries other than 0 and 1 ([-1.0])"),
        ("multilabel", 3, [1.0, float("nan"), 0.0], "entries other than 0 and 1"),
        ("multilabel", 3, [1.0, 0.0], "has 2 entries, the manifest has 3 classes"),
        ("binary", 1, [2.0], "entries other than 0 and 1 ([2.0])"),
        ("multiclass", 3, 3, "outside the class indices 0..2"),
        ("multiclass", 3, 1.5, "not an integer class index"),
    ],
)
def test_invalid_labels_are_refused_when_the_manifest_is_loaded(task, num_classes, label, reason):
    items = [{"id": "ok", "label": [0.0] * num_classes if task != "multiclass" else 0}, {"id": "bad7", "label": label}]
    with pytest.raises(ManifestError) as info:
        check_classification_labels(items, task, num_classes, "m.json", "test")
    assert "m.json: 1 item(s) of 'test' have invalid" in str(info.value)
    assert f"bad7: label {label!r}" in str(info.value) and reason in str(info.value)


def test_a_minus_one_in_the_test_split_fails_the_workflow_before_training(tmp_path):
    data = tmp_path / "data"
    manifest = write_tiny_classification_dataset(data, "multilabel", 3)
    content = json.loads(manifest.read_text())
    content["test"][2]["label"] = [1.0, -1.0, 0.0]
    manifest.write_text(json.dumps(content))
    wf = ConfigWorkflow(
        config_file=CONFIGS, meta_file=META, workflow_type="train", **classification_overrides(data, tmp_path / "run")
    )
    raises_from_config(
        ManifestError,
        f"{content['test'][2]['id']}: label [1.0, -1.0, 0.0] has entries other than 0",
        lambda: wf.parser.get_parsed_content("test#datalist"),
    )


def test_classification_meta_without_class_names_is_a_clear_error():
    with pytest.raises(ManifestError, match="m.json: meta has no 'class_names'; a multilabel manifest must list"):
        classification_class_names("multilabel", {"fractions": {}}, "m.json")
    assert classification_class_names("binary", {}, "m.json") == ["positive"]
    with pytest.raises(ManifestError, match="repeated names"):
        classification_class_names("multiclass", {"class_names": ["a", "a"]}, "m.json")


# ----------------------------------------------------------------------------------------------- 7. preflight
def test_an_empty_training_split_is_refused():
    with pytest.raises(PreflightError, match="m.json: the training split is empty"):
        check_pretrain_run([], pretrain_items(2), batch_size=4, manifest="m.json")


@pytest.mark.parametrize("n,batch,world,per_rank", [(12, 13, 1, 12), (12, 7, 2, 6)])
def test_a_batch_larger_than_the_split_is_refused(n, batch, world, per_rank):
    with pytest.raises(
        PreflightError, match=f"has {n} items, {per_rank} per process on {world} process.*batch_size={batch}"
    ):
        check_pretrain_run(pretrain_items(n), [], batch_size=batch, world_size=world, manifest="m.json")
    assert check_pretrain_run(pretrain_items(n), [], batch_size=per_rank, world_size=world) == 1


def test_an_item_without_a_report_is_named():
    items = pretrain_items(3)
    del items[1]["report"]
    with pytest.raises(PreflightError, match="1 item.* of 'training' lack a report: item p1 has no 'report'"):
        check_pretrain_run(items, [], batch_size=1, manifest="m.json")


def test_the_tokenizer_transform_names_an_item_without_a_report(tiny_text_model):  # noqa: F811
    from bundle.data.tokenization import TokenizeReportd

    with pytest.raises(KeyError, match="item x9: no 'report'"):
        TokenizeReportd(tokenizer_dir=str(tiny_text_model), max_length=16)({"id": "x9", "image": "a.png"})


def test_a_run_where_every_report_is_empty_is_refused():
    with pytest.raises(PreflightError, match="every one of the 4 reports of 'training' reduces to no sentence"):
        check_pretrain_run(pretrain_items(4, report="Ok. Fine."), [], batch_size=2)
    items = pretrain_items(4)
    items[0]["report"] = ""
    assert check_pretrain_run(items, [], batch_size=2) == 2  # some empty: a warning, the trainer drops those rows


def test_max_length_beyond_the_text_model_positions_is_refused(tiny_text_model):  # noqa: F811
    with pytest.raises(PreflightError, match="max_length=65 exceeds the 64 token positions"):
        check_text_model_dir(str(tiny_text_model), max_length=65)
    assert check_text_model_dir(str(tiny_text_model), max_length=64) == str(tiny_text_model)


def test_an_unwritable_ckpt_dir_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PreflightError, match=f"ckpt_dir {blocker}/models is not a writable directory"):
        check_writable_dir(str(blocker / "models"), "ckpt_dir")


def test_a_tokenizer_whose_vocabulary_did_not_load_is_refused(tmp_path):
    # what the old test fixture did: under transformers 5 the vocab file is ignored and 5 tokens remain
    from transformers import BertConfig, BertTokenizerFast

    BertConfig(
        vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    ).save_pretrained(str(tmp_path))
    (tmp_path / "vocab.txt").write_text(Path(minilm_dir(), "vocab.txt").read_text(encoding="utf-8"))
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(str(tmp_path))
    with pytest.raises(TextModelDirError, match="the tokenizer has only 5 tokens for a model with vocab_size=30522"):
        check_text_model_dir(str(tmp_path))


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    from transformers import AutoTokenizer, BertConfig

    BertConfig(
        vocab_size=1000, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    ).save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(str(tmp_path))
    with pytest.raises(TextModelDirError, match="30522 tokens but the model's embedding table has vocab_size=1000"):
        check_text_model_dir(str(tmp_path))


def test_the_pretrain_workflow_refuses_a_too_large_batch_in_initialize(
    tmp_path,
    tiny_dataset,
    tiny_text_model,
):
    overrides = dict(pretrain_overrides(tiny_dataset, tiny_text_model, tmp_path), batch_size=13)
    wf = ConfigWorkflow(config_file=PRETRAIN, meta_file=META, workflow_type="train", **overrides)
    raises_from_config(PreflightError, "has 12 items, 12 per process on 1 process(es)", wf.initialize)
    assert not (tmp_path / "models" / "last.pt").exists()


def test_the_pretrain_workflow_refuses_split_leakage(tmp_path, tiny_text_model):  # noqa: F811
    data = make_tiny_pretrain_dataset(tmp_path / "data", n_train=4, n_val=2)
    path = data / "manifests" / "pretrain.json"
    content = json.loads(path.read_text())
    content["validation"].append(dict(content["training"][0], id="copy_of_tr000"))
    write_manifest(path, {k: content[k] for k in ("training", "validation", "test")}, content["meta"])
    overrides = dict(pretrain_overrides(data, tiny_text_model, tmp_path), batch_size=2)
    wf = ConfigWorkflow(config_file=PRETRAIN, meta_file=META, workflow_type="train", **overrides)
    raises_from_config(
        ManifestError, "images/tr000.png in training (id tr000) and validation (id copy_of_tr000)", wf.initialize
    )
