"""The model card as the Hub reads it: its metadata (model-index from the run's own metrics, base model, library,
pipeline tag, license, datasets) loaded back by ``huggingface_hub`` from the local file, the exported-files section,
the metadata check; and the one line that says why a hub id could not be loaded (offline, or the download failed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import text_data_flags, trainer_flags
from huggingface_hub import ModelCard, ModelCardData, metadata_load, metadata_save

import warmstart
from warmstart.errors import WarmstartError, hub_unavailable
from warmstart.export import add_exported_files, validate_model_card, write_model_card

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import text_classification  # noqa: E402

_FREEZE_REPORT = {"trainable_params": 10, "total_params": 100, "trainable_groups": ["head"], "frozen_groups": ["x"]}


def _classifier_card(**fields):
    card = {
        "modality": "text",
        "name": "/somewhere/private/bert-probe",
        "base_model": "google-bert/bert-base-uncased",
        "data": "train: `train.csv`, validation: `dev.csv`",
        "data_source": {"train_file": "/somewhere/private/train.csv", "validation_file": "/somewhere/private/dev.csv"},
        "labels": ["neg", "pos"],
        "problem_type": "single_label_classification",
        "policy": {"strategy": "head_only"},
        "policy_description": "head only",
        "freeze_report": _FREEZE_REPORT,
        "metrics": {
            "eval_loss": 0.25,
            "eval_accuracy": 0.9,
            "eval_f1_macro": 0.875,
            "eval_roc_auc": 0.95,
            "eval_runtime": 1.5,
            "eval_samples_per_second": 100.0,
            "train_loss": 0.5,
            "epoch": 1.0,
        },
        "training": {"learning_rate": 1e-3},
    }
    return {**card, **fields}


CARDS = {
    "text": (
        _classifier_card(),
        {
            "base_model": "google-bert/bert-base-uncased",
            "library_name": "transformers",
            "pipeline_tag": "text-classification",
            "datasets": None,
            "dataset": ("csv", "train.csv, dev.csv"),
            "metrics": [("accuracy", "Accuracy", 0.9), ("f1", "F1 (macro)", 0.875), ("roc_auc", "ROC AUC", 0.95)],
            "splits": ["validation"] * 3,
        },
    ),
    "image": (
        _classifier_card(
            modality="image",
            name="resnet-top2",
            base_model="hf-hub:timm/resnet18.a1_in1k",
            data="`beans`",
            data_source={"dataset_name": "AI-Lab-Makerere/beans"},
            labels=["angular", "bean_rust", "healthy"],
            metrics={"eval_accuracy": 0.8, "eval_f1_macro": 0.75, "test_accuracy": 0.7, "eval_samples": 3},
        ),
        {
            "base_model": "timm/resnet18.a1_in1k",
            "library_name": "timm",
            "pipeline_tag": "image-classification",
            "datasets": ["AI-Lab-Makerere/beans"],
            "dataset": ("AI-Lab-Makerere/beans", "AI-Lab-Makerere/beans"),
            "metrics": [("accuracy", "Accuracy", 0.8), ("f1", "F1 (macro)", 0.75), ("accuracy", "Accuracy", 0.7)],
            "splits": [None, None, "test"],  # whether the hub dataset had a validation split is not recorded
        },
    ),
    "regression": (
        _classifier_card(
            base_model="tiny-bert (a local model)",
            problem_type="regression",
            labels=["score"],
            data_source={"train_file": "scores.parquet"},
            metrics={"eval_rmse": 0.5, "eval_mae": 0.25, "eval_r2": 0.75, "eval_mse": 0.25, "eval_loss": 0.125},
        ),
        {
            "base_model": None,
            "library_name": "transformers",
            "pipeline_tag": "text-classification",
            "datasets": None,
            "dataset": ("parquet", "scores.parquet"),
            "metrics": [("rmse", "RMSE", 0.5), ("mse", "MSE", 0.25), ("mae", "MAE", 0.25), ("r_squared", "R2", 0.75)],
            "splits": [None] * 4,  # validation held out of train: no split of the data to name
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(CARDS))
def test_the_card_is_what_the_hub_reads(tmp_path, kind):
    card, expected = CARDS[kind]
    path = write_model_card(tmp_path, card)
    loaded = ModelCard.load(path)  # a local file: nothing is downloaded
    data = loaded.data
    assert data.base_model == expected["base_model"]
    assert data.library_name == expected["library_name"]
    assert data.pipeline_tag == expected["pipeline_tag"]
    assert data.datasets == expected["datasets"]
    assert data.license is None  # nothing records one: none is invented
    assert data.model_name == Path(card["name"]).name
    scored = [r for r in data.eval_results if r.metric_type != "loss"]
    assert [(r.metric_type, r.metric_name, r.metric_value) for r in scored] == expected["metrics"]
    assert [r.dataset_split for r in scored] == expected["splits"]
    assert all(isinstance(r.metric_value, float) for r in data.eval_results)
    assert {(r.dataset_type, r.dataset_name) for r in data.eval_results} == {expected["dataset"]}
    assert {r.task_type for r in data.eval_results} == {expected["pipeline_tag"]}
    loss = [r.metric_value for r in data.eval_results if r.metric_type == "loss"]
    assert loss == ([card["metrics"]["eval_loss"]] if "eval_loss" in card["metrics"] else [])
    assert "/somewhere/private" not in path.read_text()  # the card may be published: file names only
    validate_model_card(tmp_path)


def test_a_regression_card_names_its_label_shape_in_the_task(tmp_path):
    card, _ = CARDS["regression"]
    data = ModelCard.load(write_model_card(tmp_path, card)).data
    assert {r.task_name for r in data.eval_results} == {"Text Classification (regression)"}


def test_a_multi_label_card_leads_with_micro_f1(tmp_path):
    metrics = {"eval_f1_macro": 0.7, "eval_f1_micro": 0.8, "eval_subset_accuracy": 0.5, "eval_matthews_correlation": 1}
    card = _classifier_card(problem_type="multi_label_classification", metrics=metrics)
    data = ModelCard.load(write_model_card(tmp_path, card)).data
    assert [(r.metric_type, r.metric_name, r.metric_value) for r in data.eval_results] == [
        ("f1", "F1 (micro)", 0.8),
        ("f1", "F1 (macro)", 0.7),
        ("exact_match", "Subset accuracy", 0.5),  # an --extra_metrics result is no metric the card can name
    ]
    assert {r.task_name for r in data.eval_results} == {"Text Classification (multi-label)"}


def test_the_metadata_round_trips_through_huggingface_hub(tmp_path):
    card, _ = CARDS["image"]
    path = write_model_card(tmp_path, card)
    metadata = metadata_load(path)
    assert ModelCardData(**metadata).to_dict() == metadata
    assert [r["dataset"].get("split") for r in metadata["model-index"][0]["results"]] == [None, "test"]
    # metadata_update works on Hub repos only; metadata_save is its local counterpart: the body stays
    body = path.read_text().split("\n---\n", 1)[1]
    metadata_save(path, {**metadata, "license": "apache-2.0"})
    assert ModelCard.load(path).data.license == "apache-2.0"
    assert path.read_text().split("\n---\n", 1)[1].strip() == body.strip()
    validate_model_card(path)


def test_the_card_names_warmstart_and_its_version_without_a_link(tmp_path):
    text = write_model_card(tmp_path, _classifier_card()).read_text()
    assert "pypi.org" not in text and "](http" not in text
    assert f"Trained with warmstart {warmstart.__version__} from **google-bert/bert-base-uncased**." in text


def test_the_license_is_given_or_the_base_model_s_never_invented(tmp_path):
    config = {"architecture": "resnet18", "pretrained_cfg": {"tag": "a1_in1k", "license": "apache-2.0"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    image = {**CARDS["image"][0]}
    assert ModelCard.load(write_model_card(tmp_path, image)).data.license == "apache-2.0"
    assert ModelCard.load(write_model_card(tmp_path, {**image, "license": "mit"})).data.license == "mit"
    random_init = {**image, "base_model": "resnet18 (random init)"}
    assert ModelCard.load(write_model_card(tmp_path, random_init)).data.license is None
    chain = {**image, "lineage": {"base_model": "resnet18 (random init)", "runs": []}}
    assert ModelCard.load(write_model_card(tmp_path, chain)).data.license is None


@pytest.mark.parametrize(
    ("pipeline_tag", "modality", "metrics", "expected"),
    [
        ("fill-mask", "text", {"eval_loss": 2.0, "eval_perplexity": 7.5}, [("perplexity", 7.5), ("loss", 2.0)]),
        ("image-feature-extraction", "image", {"eval_loss": 0.07, "eval_samples": 9}, [("loss", 0.07)]),
    ],
)
def test_a_pretraining_card_reports_its_own_task(tmp_path, pipeline_tag, modality, metrics, expected):
    card = {
        "modality": modality,
        "name": "pretrained",
        "base_model": "resnet18 (random init)",
        "data": "train: `corpus.txt`",
        "data_source": {"train_dir": "/private/unlabeled"},
        "objective": "masked",
        "pipeline_tag": pipeline_tag,
        "metrics": metrics,
        "training": {},
    }
    data = ModelCard.load(write_model_card(tmp_path, card)).data
    assert data.pipeline_tag == pipeline_tag and "pretrained" in data.tags
    assert [(r.metric_type, r.metric_value) for r in data.eval_results] == expected
    assert {(r.task_type, r.dataset_name, r.dataset_type) for r in data.eval_results} == {
        (pipeline_tag, "unlabeled", "imagefolder" if modality == "image" else "text")
    }


def test_a_card_without_a_known_dataset_or_metric_has_no_model_index(tmp_path):
    no_source = {k: v for k, v in _classifier_card().items() if k != "data_source"}
    no_metric = _classifier_card(metrics={"eval_runtime": 1.0, "epoch": 1.0})
    for card in (no_source, no_metric):
        path = write_model_card(tmp_path, card)
        assert "model-index" not in metadata_load(path)
        validate_model_card(path)


def test_exported_files_are_added_and_replaced_in_place(tmp_path):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "onnx" / "model_int8.onnx").write_bytes(b"onnx")
    path = write_model_card(tmp_path, _classifier_card())
    original, metadata = path.read_text(), metadata_load(path)
    files = [("onnx/model.onnx", "the ONNX graph,\n opset 17")]
    add_exported_files(tmp_path, files)
    once = path.read_text()
    assert "## Exported files\n- `onnx/model.onnx`: the ONNX graph, opset 17\n\n## How to load" in once
    assert add_exported_files(tmp_path, files).read_text() == once  # idempotent
    assert once.replace("## Exported files\n- `onnx/model.onnx`: the ONNX graph, opset 17\n\n", "") == original
    add_exported_files(tmp_path, [*files, ("onnx/model_int8.onnx", "int8")])
    twice = path.read_text()
    assert twice.count("## Exported files") == 1 and "`onnx/model_int8.onnx`: int8" in twice
    assert metadata_load(path) == metadata
    validate_model_card(path)
    add_exported_files(tmp_path, [])
    assert path.read_text() == original
    # the card writer renders the same section from the card key
    rendered = write_model_card(tmp_path, _classifier_card(exported_files=files)).read_text()
    assert rendered == once


def test_exported_files_go_at_the_end_of_a_card_without_how_to_load(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n\n# m\n\n## Results\nfine\n")
    text = add_exported_files(tmp_path, [("model.onnx", "graph")]).read_text()
    assert text == "---\nlicense: mit\n---\n\n# m\n\n## Results\nfine\n\n## Exported files\n- `model.onnx`: graph\n"
    assert add_exported_files(tmp_path, [("model.onnx", "graph")]).read_text() == text


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "onnx/missing.onnx"])
def test_exported_files_must_lie_in_the_model_directory(tmp_path, name):
    write_model_card(tmp_path, _classifier_card())
    with pytest.raises(WarmstartError, match="is not a path inside"):
        add_exported_files(tmp_path, [(name, "x")])


@pytest.mark.parametrize(
    ("front", "expected"),
    [
        ("model-index:\n- name: m\n  results:\n  - task: {type: text-classification}\n"
         "    metrics: [{type: accuracy, value: 0.9}]\n", "KeyError: 'dataset'"),
        ("model-index:\n- name: m\n  results:\n  - task: {type: text-classification}\n"
         "    dataset: {type: csv, name: d}\n    metrics: {type: accuracy, value: 0.9}\n", "TypeError"),
        ("model-index: {name: m}\n", "TypeError"),
        ("model-index:\n- name: m\n  results:\n  - task: {type: ''}\n    dataset: {type: csv, name: d}\n"
         "    metrics: [{type: accuracy, value: 0.9}]\n", "model-index result the Hub cannot read"),
        ("tags: [a\n", "metadata the Hub cannot read"),
    ],
)  # fmt: skip
def test_a_malformed_model_index_is_refused_in_one_line(tmp_path, front, expected):
    path = tmp_path / "README.md"
    path.write_text(f"---\n{front}---\n\n# m\n")
    with pytest.raises(WarmstartError) as caught:
        validate_model_card(path)
    message = str(caught.value)
    assert "\n" not in message and expected in message and str(path) in message


def test_a_card_without_metadata_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("# just text\n")
    with pytest.raises(WarmstartError, match="no metadata block"):
        validate_model_card(tmp_path)
    with pytest.raises(WarmstartError, match="does not exist"):
        validate_model_card(tmp_path / "nowhere")


def test_the_text_recipe_writes_a_card_the_hub_reads(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"
    results = text_classification.main(
        [*text_data_flags(tiny_bert, text_files), *trainer_flags(out, "--max_steps", "2")]
    )
    validate_model_card(out)
    data = ModelCard.load(out / "README.md").data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.base_model is None  # a local directory is no hub id
    by_type = {r.metric_type: r for r in data.eval_results if r.metric_name != "F1 (micro)"}
    assert by_type["accuracy"].metric_value == pytest.approx(results["eval_accuracy"])
    assert by_type["f1"].metric_value == pytest.approx(results["eval_f1_macro"])
    assert (by_type["accuracy"].dataset_type, by_type["accuracy"].dataset_split) == ("csv", "validation")
    assert by_type["accuracy"].dataset_name == "train.csv, validation.csv"
    assert str(tmp_path) not in (out / "README.md").read_text()


# ---------------------------------------------------------------- a hub id that could not be loaded


def _hub_switched(monkeypatch, offline: bool):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_offline_the_line_says_the_hub_is_off_and_the_cache_lacks_it(monkeypatch):
    _hub_switched(monkeypatch, offline=True)
    assert hub_unavailable("dataset 'imdb'", ConnectionError()) == (
        "cannot load dataset 'imdb': offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache: run once online "
        "or unset HF_HUB_OFFLINE"
    )
    # the variable alone, set after huggingface_hub was imported, counts too
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert "offline (HF_HUB_OFFLINE=1)" in hub_unavailable("x", OSError())


def test_online_the_line_names_the_failed_download(monkeypatch):
    _hub_switched(monkeypatch, offline=False)
    assert hub_unavailable("dataset 'imdb'", ConnectionError()) == (
        "cannot load dataset 'imdb': it could not be downloaded from the Hub (ConnectionError): check the name and "
        "the network, or set HF_HUB_OFFLINE=1 to use the cache"
    )


@pytest.mark.parametrize("offline", [True, False])
def test_each_loader_says_which_of_the_two_happened(monkeypatch, offline):
    import datasets
    import timm

    from warmstart.data.splits import load_raw_splits
    from warmstart.models import load_text_config, load_timm_backbone

    _hub_switched(monkeypatch, offline)

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.setattr(timm, "create_model", no_network)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", no_network)
    said = "offline (HF_HUB_OFFLINE=1)" if offline else "could not be downloaded from the Hub (OSError)"
    loaders = {
        "dataset 'nobody/no-data'": lambda: load_raw_splits(dataset_name="nobody/no-data"),
        "'nobody/no-net'": lambda: load_timm_backbone("nobody/no-net"),
        "the configuration of 'nobody/no-bert'": lambda: load_text_config("nobody/no-bert"),
    }
    for what, load in loaders.items():
        with pytest.raises(WarmstartError) as caught:
            load()
        assert str(caught.value).startswith(f"cannot load {what}: ") and said in str(caught.value)


def test_a_local_folder_that_fails_to_load_is_not_blamed_on_the_hub(tmp_path, monkeypatch):
    import datasets

    from warmstart.data.splits import load_raw_splits

    def broken(*args, **kwargs):
        raise ValueError("no data files found")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(WarmstartError) as caught:
        load_raw_splits(dataset_name=str(tmp_path))
    assert "no data files found" in str(caught.value) and "Hub" not in str(caught.value)
