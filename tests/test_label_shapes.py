"""Every label shape: the shape inferred from the label column (or refused where the data contradicts it), the labels
encoded, the losses and metrics against torch / scikit-learn / scipy, thresholds tuned, the regression scale folded
into the saved head, and runs end to end (tiny BERT, tiny timm CNN and ViT x multi-label and regression x full,
head_only and lora) whose outputs load in transformers, timm and ``pipeline()`` with equal outputs."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import FILLER, NEGATIVE, POSITIVE, kill_at_checkpoint, trainer_flags
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from PIL import Image
from scipy import stats
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, mean_absolute_error, r2_score
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers import pipeline as hf_pipeline

from warmstart.data.targets import encode_targets, infer_problem_type, target_scale
from warmstart.errors import WarmstartError
from warmstart.metrics import multi_label_metrics, regression_metrics, sigmoid, tune_thresholds
from warmstart.models import fold_target_scale
from warmstart.problems import MULTI_LABEL, REGRESSION, SINGLE_LABEL, problem_named
from warmstart.regularization import make_multi_label_loss, make_regression_loss, positive_weights_from_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import image_classification  # noqa: E402
import predict  # noqa: E402
import text_classification  # noqa: E402


class Args:
    def __init__(self, **values):
        self.label_column_name = "label"
        self.label_column_names = None
        self.label_separator = None
        self.problem_type = None
        self.__dict__.update(values)


def splits_of(train: dict, validation: dict | None = None, features: Features | None = None) -> DatasetDict:
    parts = {"train": Dataset.from_dict(train, features=features)}
    if validation is not None:
        parts["validation"] = Dataset.from_dict(validation, features=features)
    return DatasetDict(parts)


# --- which shape -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "data", "separator", "expected"),
    [
        (["label"], {"label": [["a", "b"], ["b"], []]}, None, MULTI_LABEL),
        (["label"], {"label": ['["a", "b"]', '["b"]', "[]"]}, None, MULTI_LABEL),
        (["label"], {"label": ["a|b", "b", ""]}, "|", MULTI_LABEL),
        (["a", "b"], {"a": [0, 1, 1], "b": [1, 0, 0]}, None, MULTI_LABEL),
        (["a", "b"], {"a": [0.5, 1.2, 3.0], "b": [1.0, 0.0, 2.0]}, None, REGRESSION),
        (["label"], {"label": [0.25, 1.5, 3.0]}, None, REGRESSION),
        (["label"], {"label": [0.0, 1.0, 2.0]}, None, SINGLE_LABEL),  # whole numbers stay classes
        (["label"], {"label": ["pos", "neg", "pos"]}, None, SINGLE_LABEL),
        (["label"], {"label": [1, 0, 1]}, None, SINGLE_LABEL),
    ],
)
def test_the_shape_is_inferred_from_the_label_columns(columns, data, separator, expected):
    assert infer_problem_type(Dataset.from_dict(data), columns, separator)[0] == expected


def test_a_hub_sequence_of_class_labels_is_multi_label_with_its_names():
    features = Features({"text": Value("string"), "label": Sequence(ClassLabel(names=["x", "y", "z"]))})
    splits = splits_of({"text": ["a", "b", "c"], "label": [[0, 2], [1], []]}, features=features)
    space = encode_targets(splits, Args())
    assert space.problem_type == MULTI_LABEL and space.names == ["x", "y", "z"]
    assert splits["train"]["labels"] == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_multi_label_targets_are_multi_hot_with_names_from_train():
    splits = splits_of(
        {"text": ["a", "b", "c"], "label": ['["red", "warm"]', '["cold"]', "[]"]},
        {"text": ["d"], "label": ['["warm", "cold"]']},
    )
    space = encode_targets(splits, Args())
    assert space.names == ["cold", "red", "warm"]
    assert splits["train"]["labels"] == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert splits["validation"]["labels"] == [[1, 0, 1]]
    assert "label" not in splits["train"].column_names


def test_several_flag_columns_are_the_labels_and_are_dropped():
    splits = splits_of({"text": ["a", "b"], "spam": [1, 0], "urgent": [1, 1]})
    space = encode_targets(splits, Args(label_column_names="spam, urgent"))
    assert space.problem_type == MULTI_LABEL and space.names == ["spam", "urgent"]
    assert splits["train"]["labels"] == [[1, 1], [0, 1]] and splits["train"].column_names == ["text", "labels"]


def test_regression_targets_stay_in_their_units_and_the_scale_is_train_s():
    splits = splits_of({"text": ["a", "b", "c"], "y": [1.5, 2.5, 5.0]}, {"text": ["d"], "y": ["4.25"]})
    space = encode_targets(splits, Args(label_column_name="y", problem_type=REGRESSION))
    assert space.names == ["y"] and splits["validation"]["labels"] == [4.25]
    mean, std = target_scale(splits["train"], space.names)
    assert mean == pytest.approx([3.0]) and std == pytest.approx([np.std([1.5, 2.5, 5.0])])


@pytest.mark.parametrize(
    ("data", "args", "message"),
    [
        ({"label": ['["a"]', '["b"]']}, {}, None),  # fine: the control
        ({"label": ['["a"]', "[]"]}, {"validation": ['["z"]']}, "label 'z' (row 1 of the validation split) is never"),
        ({"label": ["[]", "[]"]}, {}, "no label in any train row"),
        ({"label": [1.5, float("nan")]}, {}, "have no 'label' value"),
        ({"label": [1.5, float("inf")]}, {}, "must be finite numbers"),
        ({"label": ["1.5", "many"]}, {"problem_type": REGRESSION}, "holds 'many', not a number"),
        ({"label": ["pos", "neg"]}, {"problem_type": REGRESSION}, "not a number"),
        ({"label": [["a"], ["b"]]}, {"problem_type": REGRESSION}, "holds lists of labels"),
        ({"label": [["a"], ["b"]]}, {"problem_type": SINGLE_LABEL}, "holds lists of labels"),
        ({"label": [2.0, 2.0]}, {"problem_type": REGRESSION}, "is constant over the train split"),
        ({"label": ['["a", "b"']}, {}, "is not a JSON list"),
    ],
)
def test_labels_that_cannot_be_encoded_are_refused_in_one_line(data, args, message):
    validation = args.pop("validation", None)
    splits = splits_of(
        {"text": [f"t{i}" for i in range(len(data["label"]))], **data},
        {"text": ["v"], "label": validation} if validation else None,
    )
    if message is None:
        encode_targets(splits, Args(**args))
        return
    with pytest.raises(WarmstartError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        space = encode_targets(splits, Args(**args))
        if space.problem_type == REGRESSION:
            target_scale(splits["train"], space.names)
    assert "\n" not in str(err.value)


# --- losses and metrics ------------------------------------------------------------------------------------------


def test_the_multi_label_loss_is_bce_with_logits_and_accumulates_exactly():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), (torch.rand(6, 4) > 0.5).float()
    loss = make_multi_label_loss(4)
    torch.testing.assert_close(loss({"logits": logits}, targets), torch.nn.BCEWithLogitsLoss()(logits, targets))
    weights = positive_weights_from_labels(targets)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, targets)
    torch.testing.assert_close(make_multi_label_loss(4, pos_weight=weights)({"logits": logits}, targets), expected)
    # two micro-batches of 4 and 2 examples, given the whole batch's count, sum to the loss of the batch of 6
    parts = sum(loss({"logits": logits[s]}, targets[s], num_items_in_batch=24) for s in (slice(0, 4), slice(4, 6)))
    torch.testing.assert_close(parts, loss({"logits": logits}, targets))
    smoothed = make_multi_label_loss(4, label_smoothing=0.2)({"logits": logits}, targets)
    torch.testing.assert_close(smoothed, torch.nn.BCEWithLogitsLoss()(logits, targets * 0.8 + 0.1))


def test_positive_weights_are_negatives_over_positives():
    targets = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 1]], dtype=torch.float32)
    assert positive_weights_from_labels(targets).tolist() == [3.0, pytest.approx(1 / 3)]
    with pytest.raises(WarmstartError, match="label 'b' has no positive"):
        positive_weights_from_labels(torch.tensor([[1.0, 0.0]]), names=["a", "b"])


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_the_regression_loss_compares_standardised_targets(kind):
    torch.manual_seed(0)
    outputs, labels = torch.randn(5, 1), torch.randn(5) * 10 + 100
    mean, std = [100.0], [10.0]
    target = ((labels - 100) / 10).reshape(5, 1)
    reference = torch.nn.MSELoss() if kind == "mse" else torch.nn.HuberLoss()
    torch.testing.assert_close(
        make_regression_loss(mean, std, kind)({"logits": outputs}, labels), reference(outputs, target)
    )


def test_multi_label_metrics_are_scikit_learn_s():
    rng = np.random.default_rng(0)
    labels = (rng.random((40, 3)) > 0.6).astype(np.float32)
    logits = rng.normal(size=(40, 3)) + 2 * (labels - 0.5)
    metrics = multi_label_metrics(logits, labels)
    predicted = sigmoid(logits) >= 0.5
    assert metrics["f1_micro"] == pytest.approx(f1_score(labels, predicted, average="micro"))
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(labels, predicted))
    assert metrics["subset_accuracy"] == pytest.approx((predicted == labels.astype(bool)).all(1).mean())
    ap = np.mean([average_precision_score(labels[:, c], logits[:, c]) for c in range(3)])
    assert metrics["mean_average_precision"] == pytest.approx(ap)


def test_tuned_thresholds_never_lower_validation_f1():
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 4)) > 0.7).astype(np.float32)
    logits = rng.normal(size=(60, 4)) + 1.5 * labels - 1.5  # under-confident: 0.5 misses positives
    thresholds = tune_thresholds(logits, labels)
    assert all(0 < t < 1 for t in thresholds)
    tuned, fixed = multi_label_metrics(logits, labels, thresholds), multi_label_metrics(logits, labels)
    for c in range(4):
        at = [f1_score(labels[:, c], sigmoid(logits[:, c]) >= t) for t in (thresholds[c], 0.5)]
        assert at[0] >= at[1]
    assert tuned["f1_macro"] >= fixed["f1_macro"] and tuned["f1_macro"] > fixed["f1_macro"] + 0.05


def test_regression_metrics_are_scipy_and_scikit_learn_s():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=50)
    predicted = truth + rng.normal(scale=0.3, size=50)
    metrics = regression_metrics(predicted, truth)
    assert metrics["mse"] == pytest.approx(np.mean((truth - predicted) ** 2))
    assert metrics["rmse"] == pytest.approx(np.sqrt(metrics["mse"]))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, predicted))
    assert metrics["r2"] == pytest.approx(r2_score(truth, predicted))
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(predicted, truth)[0])
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(predicted, truth)[0])


def test_each_shape_checks_the_metric_it_is_judged_by():
    assert problem_named(REGRESSION).check_metric("eval_rmse") == "rmse"
    with pytest.raises(WarmstartError, match="a regression run does not report it"):
        problem_named(REGRESSION).check_metric("accuracy")
    with pytest.raises(WarmstartError, match="unknown --problem_type"):
        problem_named("ranking")


def test_the_folded_head_outputs_the_targets_units():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    before = model(x).detach()
    fold_target_scale(model, [10.0, -1.0], [2.0, 0.5])
    torch.testing.assert_close(model(x), before * torch.tensor([2.0, 0.5]) + torch.tensor([10.0, -1.0]))
    fold_target_scale(model, [10.0, -1.0], [2.0, 0.5], inverse=True)
    torch.testing.assert_close(model(x), before)


# --- end to end ----------------------------------------------------------------------------------------------------

TOPICS = {"plot": ["plot", "story"], "cast": ["cast", "actor"], "music": ["music", "song"]}


def _tagged_texts(path: Path, n: int, seed: int) -> Path:
    """Texts tagged with the topics they mention (a JSON list per row) and scored by their sentiment words."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "tags", "score"])
        for i in range(n):
            tags = [t for t in TOPICS if rng.random() < 0.5] or ([] if i % 5 == 0 else ["plot"])
            good = rng.randint(0, 3)
            words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE) for _ in range(good)] + [rng.choice(NEGATIVE)]
            words += [w for t in tags for w in TOPICS[t][:1]]
            rng.shuffle(words)
            writer.writerow([" ".join(words), json.dumps(tags), good * 1.5 + 10 + rng.random() * 0.1])
    return path


@pytest.fixture()
def tagged_text(tmp_path) -> dict[str, Path]:
    return {
        "train": _tagged_texts(tmp_path / "train.csv", 48, 0),
        "validation": _tagged_texts(tmp_path / "validation.csv", 16, 1),
    }


def _topic_bert(path: Path, dropout: float | None = None) -> Path:
    """conftest's tiny BERT, whose vocabulary also has the topic words."""
    from conftest import _write_bert
    from transformers import BertModel, BertTokenizer

    _write_bert(path, dropout=dropout)
    tokenizer = BertTokenizer.from_pretrained(path)
    tokenizer.add_tokens([w for words in TOPICS.values() for w in words])
    tokenizer.save_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel.from_pretrained(path)
        model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_with_topics(tmp_path_factory) -> Path:
    return _topic_bert(tmp_path_factory.mktemp("tiny_bert_topics"))


def _coloured_images(root: Path, n: int, seed: int) -> Path:
    """Squares with some of red / green / blue switched on (the tags) and a brightness (the score), in a CSV."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "data.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "tags", "brightness"])
        for i in range(n):
            on = [c for c in ("red", "green", "blue") if rng.random() < 0.5]
            level = rng.uniform(0.3, 1.0)
            colour = tuple(int(255 * level) if c in on else 20 for c in ("red", "green", "blue"))
            Image.new("RGB", (24, 24), colour).save(root / f"{i}.png")
            writer.writerow([f"{i}.png", json.dumps(on), round(200 + level * 100, 3)])
    return root / "data.csv"


@pytest.fixture()
def coloured_images(tmp_path) -> dict[str, Path]:
    return {
        "train": _coloured_images(tmp_path / "train", 24, 0),
        "validation": _coloured_images(tmp_path / "val", 9, 1),
    }


SHAPES = {MULTI_LABEL: ("tags", []), REGRESSION: (None, [])}


def _run(kind: str, data: dict[str, Path], model: str | Path, out: Path, shape: str, strategy: str, *extra: str):
    label = {
        "text": {MULTI_LABEL: "tags", REGRESSION: "score"},
        "image": {MULTI_LABEL: "tags", REGRESSION: "brightness"},
    }
    flags = [
        "--model_name_or_path",
        str(model),
        "--train_file",
        str(data["train"]),
        "--validation_file",
        str(data["validation"]),
        "--label_column_name",
        label[kind][shape],
        "--freeze_strategy",
        strategy,
        *trainer_flags(out),
        *extra,
    ]
    if kind == "image":
        flags += ["--random_init", "--image_size", "32"]
        return image_classification.main(flags)
    return text_classification.main(flags)


MODELS = [("text", "bert"), ("image", "test_resnet"), ("image", "test_vit")]


@pytest.mark.parametrize("shape", [MULTI_LABEL, REGRESSION])
@pytest.mark.parametrize("strategy", ["full", "head_only", "lora"])
@pytest.mark.parametrize(("kind", "model"), MODELS)
def test_every_shape_trains_saves_and_reloads_with_equal_outputs(
    kind, model, strategy, shape, tagged_text, tiny_bert_with_topics, coloured_images, tmp_path
):
    if kind == "text":
        data, model = tagged_text, tiny_bert_with_topics
    else:
        data = coloured_images
    extra = []
    out = tmp_path / "out"
    results = _run(kind, data, model, out, shape, strategy, *extra)
    problem = problem_named(shape)
    assert f"eval_{problem.headline}" in results
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert config["targets"]["problem_type"] == shape
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["problem_type"] == shape

    if kind == "text":
        model_out = AutoModelForSequenceClassification.from_pretrained(out).eval()
        texts = ["the plot was good", "music and cast were awful"]
        tokens = hf_pipeline("text-classification", model=str(out)).tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model_out(**tokens).logits
        classify = hf_pipeline("text-classification", model=str(out), top_k=None)
        scored = classify([texts[0]])[0]
        by_label = {p["label"]: p["score"] for p in scored}
        first = logits[0]
    else:
        model_out = AutoModelForImageClassification.from_pretrained(out).eval()
        timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        pixels = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            logits = model_out(pixel_values=pixels).logits
            torch.testing.assert_close(logits, timm_model(pixels), rtol=1e-5, atol=1e-5)
        image = Image.open(next(coloured_images["validation"].parent.glob("*.png"))).convert("RGB")
        classify = hf_pipeline("image-classification", model=str(out))
        scored = classify(image, top_k=len(model_out.config.id2label))
        by_label = {p["label"]: p["score"] for p in scored}
        processed = classify.image_processor(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            first = model_out(pixel_values=processed).logits[0]
    names = [model_out.config.id2label[i] for i in range(model_out.config.num_labels)]
    expected = torch.sigmoid(first) if shape == MULTI_LABEL else first
    torch.testing.assert_close(torch.tensor([by_label[n] for n in names]), expected.float(), rtol=1e-4, atol=1e-5)
    if shape == MULTI_LABEL:
        assert len(config["targets"]["thresholds"]) == len(names)
    else:
        # the saved head outputs the targets' units: what it gives is near their mean, not near 0
        mean = config["targets"]["target_mean"][0]
        assert abs(float(first[0]) - mean) < 3 * config["targets"]["target_std"][0] + 1


# --- prediction ----------------------------------------------------------------------------------------------------


def _predict(model: Path, source: Path, label_column: str, output: Path) -> tuple[dict, list[dict[str, str]]]:
    """recipes/predict.py on ``source`` with its true labels: what it returns, and the rows of the CSV it wrote."""
    predicted = predict.main(
        [
            "--model_name_or_path", str(model), "--input", str(source), "--output", str(output),
            "--label_column_name", label_column, "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    with output.open() as f:
        return predicted, list(csv.DictReader(f))


def test_prediction_uses_the_run_s_thresholds_and_scores_as_the_run_did(tagged_text, tiny_bert_with_topics, tmp_path):
    out = tmp_path / "out"
    # fp32 pinned: auto times the model, and under load the run may choose bf16 where predict.py runs fp32
    results = _run(
        "text",
        tagged_text,
        tiny_bert_with_topics,
        out,
        MULTI_LABEL,
        "full",
        "--max_steps",
        "12",
        "--precision",
        "fp32",
    )
    thresholds = yaml.safe_load((out / "warmstart_config.yaml").read_text())["targets"]["thresholds"]
    assert len(thresholds) == 3 and thresholds != [0.5, 0.5, 0.5]  # tuned on validation
    predicted, rows = _predict(out, tagged_text["validation"], "tags", tmp_path / "p.csv")
    # the same validation rows at the same thresholds: the F1 the run reported
    assert predicted["f1_micro"] == pytest.approx(results["eval_f1_micro"], abs=1e-6)
    names = predicted["labels"]
    for row in rows:
        chosen = [n for n, t in zip(names, thresholds) if float(row[f"prob_{n}"]) >= t]
        assert json.loads(row["predicted_labels"]) == chosen


def test_a_fixed_threshold_is_used_for_every_label(tagged_text, tiny_bert_with_topics, tmp_path):
    out = tmp_path / "out"
    _run("text", tagged_text, tiny_bert_with_topics, out, MULTI_LABEL, "head_only", "--threshold", "0.3")
    assert yaml.safe_load((out / "warmstart_config.yaml").read_text())["targets"]["thresholds"] == [0.3] * 3


def test_a_regression_model_predicts_in_the_targets_units(coloured_images, tmp_path):
    out = tmp_path / "out"
    results = _run("image", coloured_images, "test_resnet", out, REGRESSION, "full", "--max_steps", "6")
    predicted, rows = _predict(out, coloured_images["validation"], "brightness", tmp_path / "p.csv")
    # the saved model's values against the true brightness (200..300): the error the run reported in those units
    assert predicted["rmse"] == pytest.approx(results["eval_rmse"], rel=1e-4)
    assert list(rows[0]) == ["id", "predicted_brightness"]
    assert all(150 < float(row["predicted_brightness"]) < 350 for row in rows)


# --- evaluate metrics ----------------------------------------------------------------------------------------------

METRIC_SCRIPT = """
import datasets
import evaluate


class {name}(evaluate.Metric):
    def _info(self):
        kind = datasets.Value("{dtype}")
        return evaluate.MetricInfo(
            description="a local metric", citation="", inputs_description="predictions, references",
            features=datasets.Features({{"predictions": kind, "references": kind}}),
        )

    def _compute(self, predictions, references):
        pairs = list(zip(predictions, references))
        return {{{body}, "comment": "not a number: left out"}}
"""


def _metric_script(folder: Path, name: str, dtype: str, body: str) -> Path:
    path = folder / f"{name.lower()}.py"
    path.write_text(METRIC_SCRIPT.format(name=name, dtype=dtype, body=body))
    return path


def test_extra_metrics_from_a_local_script_score_what_the_run_decides(tagged_text, tiny_bert_with_topics, tmp_path):
    share = _metric_script(
        tmp_path, "ExactShare", "int64", '"exact_share": sum(p == r for p, r in pairs) / len(pairs)'
    )
    distance = _metric_script(
        tmp_path, "MeanDistance", "float64", '"distance": sum(abs(p - r) for p, r in pairs) / len(pairs)'
    )
    # single-label: class ids against class ids, the share of them equal is the accuracy
    from conftest import _sentences, write_text_csv

    files = {
        s: write_text_csv(tmp_path / f"{s}.csv", _sentences(n, i)) for i, (s, n) in enumerate((("t", 32), ("v", 16)))
    }
    results = text_classification.main(
        [
            "--model_name_or_path", str(tiny_bert_with_topics), "--train_file", str(files["t"]),
            "--validation_file", str(files["v"]), "--extra_metrics", str(share), *trainer_flags(tmp_path / "a"),
        ]
    )  # fmt: skip
    assert results["eval_exact_share"] == pytest.approx(results["eval_accuracy"])
    assert "eval_comment" not in results
    # regression: values in the targets' units against the true ones, the mean distance is the MAE
    results = _run(
        "text",
        tagged_text,
        tiny_bert_with_topics,
        tmp_path / "b",
        REGRESSION,
        "full",
        "--extra_metrics",
        str(distance),
    )
    assert results["eval_distance"] == pytest.approx(results["eval_mae"], rel=1e-5)


def test_a_comparison_keeps_the_lowest_error_and_defaults_to_the_shape_s_headline():
    from warmstart.comparison import best_row, headline_metric

    rows = [
        {"run": "full", "eval_rmse": 2.0, "eval_loss": 0.5, "trainable_params": 100},
        {"run": "head_only", "eval_rmse": 1.0, "eval_loss": 0.7, "trainable_params": 10},
    ]
    assert headline_metric(rows) == "rmse" and best_row(rows, "rmse")["run"] == "head_only"
    assert best_row(rows, "loss")["run"] == "full"
    tagged = [
        {"run": "a", "eval_f1_micro": 0.5, "eval_hamming_loss": 0.1, "trainable_params": 1},
        {"run": "b", "eval_f1_micro": 0.7, "trainable_params": 2},
    ]
    assert headline_metric(tagged) == "f1_micro" and best_row(tagged, "f1_micro")["run"] == "b"


# --- resume and several processes -----------------------------------------------------------------------------------


def _plain_flags(out: Path, steps: int, batch: int, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", str(batch),
        "--learning_rate", "3e-3", "--warmup_steps", "0", "--precision", "fp32", "--channels_last", "false",
        "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0", "--disable_tqdm", "true",
        "--group_by_length", "false", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize(
    ("shape", "strategy"),
    [(MULTI_LABEL, ["full"]), (REGRESSION, ["head_only"])],
    ids=["multi_label_full", "regression_head_only_cached"],
)
def test_a_killed_run_of_each_shape_resumes_to_the_weights_of_an_uninterrupted_one(
    shape, strategy, tagged_text, tiny_bert_with_topics, tmp_path
):
    import os
    import signal

    from safetensors.torch import load_file

    label = {MULTI_LABEL: "tags", REGRESSION: "score"}[shape]
    data = [
        "--model_name_or_path", str(tiny_bert_with_topics), "--train_file", str(tagged_text["train"]),
        "--validation_file", str(tagged_text["validation"]), "--label_column_name", label,
        "--freeze_strategy", *strategy,
    ]  # fmt: skip
    steps = ["--save_strategy", "steps", "--save_steps", "20", "--logging_steps", "10"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    text_classification.main([*data, *_plain_flags(straight, 100, 4, *steps)])
    script = Path(__file__).resolve().parents[1] / "recipes" / "text_classification.py"
    command = [sys.executable, str(script), *data, *_plain_flags(killed, 100, 4, *steps)]
    # the threads of this process (no OMP_NUM_THREADS of its own): another summation order would differ in the bits
    status = kill_at_checkpoint(command, killed, 40, {**os.environ, "HF_HUB_OFFLINE": "1"})
    assert status == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = text_classification.main(
        [*data, *_plain_flags(killed, 100, 4, *steps, "--resume_from_checkpoint", "auto")]
    )
    expected, got = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    reference = json.loads((straight / "eval_results.json").read_text())
    headline = f"eval_{problem_named(shape).headline}"
    assert resumed[headline] == reference[headline] and resumed["eval_loss"] == reference["eval_loss"]
    recorded = [yaml.safe_load((d / "warmstart_config.yaml").read_text())["targets"] for d in (straight, killed)]
    assert recorded[0] == recorded[1]  # thresholds / scale decided alike


@pytest.mark.parametrize("shape", [MULTI_LABEL, REGRESSION])
def test_two_processes_match_one_process_for_each_shape(shape, coloured_images, tmp_path):
    import subprocess

    from conftest import torchrun_command

    bert = _topic_bert(tmp_path / "bert", dropout=0.0)  # dropout masks are drawn per process
    text = {"train": _tagged_texts(tmp_path / "t.csv", 64, 0), "validation": _tagged_texts(tmp_path / "v.csv", 33, 1)}
    label = {MULTI_LABEL: "tags", REGRESSION: "score"}[shape]
    data = [
        "--model_name_or_path", str(bert), "--train_file", str(text["train"]),
        "--validation_file", str(text["validation"]), "--label_column_name", label, "--freeze_strategy", "full",
        "--save_strategy", "no",
    ]  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "recipes" / "text_classification.py"
    one = subprocess.run(
        [sys.executable, str(script), *data, *_plain_flags(tmp_path / "one", 40, 16)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        torchrun_command(script, *data, *_plain_flags(tmp_path / "two", 40, 8)),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    single, double = (json.loads((tmp_path / d / "all_results.json").read_text()) for d in ("one", "two"))
    for key in (
        "train_loss",
        "eval_loss",
        *(f"eval_{m}" for m in problem_named(shape).metrics if f"eval_{m}" in single),
    ):
        assert double[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
    targets = [yaml.safe_load((tmp_path / d / "warmstart_config.yaml").read_text())["targets"] for d in ("one", "two")]
    assert targets[0].keys() == targets[1].keys()
    for key in ("thresholds", "target_mean", "target_std"):
        if key in targets[0]:
            assert targets[1][key] == pytest.approx(targets[0][key], rel=1e-4), key


def test_lp_ft_and_gradual_train_every_shape(tagged_text, tiny_bert_with_topics, tmp_path):
    """The Trainer probes a multi-label head for half the epochs (the solver fits single-label heads); gradual
    unfreezing of a regression runs its schedule."""
    epochs = ["--max_steps", "-1", "--num_train_epochs", "2"]
    results = _run("text", tagged_text, tiny_bert_with_topics, tmp_path / "a", MULTI_LABEL, "lp_ft", *epochs)
    probe = yaml.safe_load((tmp_path / "a" / "warmstart_config.yaml").read_text())["probe"]
    assert probe["solver"] == "trainer" and "half the epochs (1" in probe["reason"]
    saved = json.loads((tmp_path / "a" / "all_results.json").read_text())
    assert saved["freeze_policy"]["probe_epochs"] == 1.0 and "eval_f1_micro" in results
    results = _run(
        "text",
        tagged_text,
        tiny_bert_with_topics,
        tmp_path / "b",
        REGRESSION,
        "gradual",
        "--unfreeze_every",
        "1",
        "--unfreeze_unit",
        "steps",
    )
    assert "eval_rmse" in results
    schedule = yaml.safe_load((tmp_path / "b" / "warmstart_config.yaml").read_text())["schedule"]
    assert len(schedule) >= 2  # stages unfrozen as the steps went


# --- drivers ---------------------------------------------------------------------------------------------------------


def test_a_comparison_of_a_multi_label_data_set_keeps_the_best_by_micro_f1(
    tagged_text, tiny_bert_with_topics, tmp_path
):
    import compare_strategies

    out = tmp_path / "cmp"
    flags = [a for a in trainer_flags(out) if a not in ("--learning_rate", "1e-3")]
    rows = compare_strategies.main(
        [
            "--model_name_or_path", str(tiny_bert_with_topics), "--train_file", str(tagged_text["train"]),
            "--validation_file", str(tagged_text["validation"]), "--label_column_name", "tags", *flags,
            "--strategies", "head_only", "full", "--learning_rates", "1e-2",
        ]
    )  # fmt: skip
    assert all("eval_f1_micro" in row for row in rows)
    best = max(rows, key=lambda row: (row["eval_f1_micro"], -row["eval_loss"]))
    kept = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert kept["targets"]["problem_type"] == MULTI_LABEL
    assert kept["freeze"]["freeze_strategy"] == best["strategy"]


def test_a_search_of_a_regression_minimises_the_error(tagged_text, tiny_bert_with_topics, tmp_path):
    out = tmp_path / "search"
    space = json.dumps({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}})
    results = _run(
        "text", tagged_text, tiny_bert_with_topics, out, REGRESSION, "full",
        "--problem_type", REGRESSION, "--hparam_search", "optuna", "--hparam_space", space, "--n_trials", "2",
    )  # fmt: skip
    with (out / "search_results.csv").open() as f:
        trials = list(csv.DictReader(f))
    best = min(trials, key=lambda t: float(t["eval_rmse"]))  # the lowest error, not the highest
    assert results["best_trial"] == int(best["trial"])
    assert results["eval_rmse"] == pytest.approx(float(best["eval_rmse"]))


def test_a_chain_passes_the_backbone_between_label_shapes_and_keeps_a_same_shape_head(
    tagged_text, tiny_bert_with_topics, tmp_path
):
    """tags (multi-label) -> score (regression) -> tags again: each change of shape starts a new head on the
    trained encoder; a link on the same shape and labels keeps its base model's head."""
    import chain as chain_recipe

    common = {
        "train_file": str(tagged_text["train"]), "validation_file": str(tagged_text["validation"]),
        "max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "save_strategy": "no",
        "report_to": "none", "use_cpu": True, "dataloader_num_workers": 0,
    }  # fmt: skip
    spec = {
        "links": [
            {"name": "tags", "recipe": "text_classification",
             "args": {**common, "model_name_or_path": str(tiny_bert_with_topics), "label_column_name": "tags"}},
            {"name": "score", "recipe": "text_classification",
             "args": {**common, "model_name_or_path": "{tags}", "label_column_name": "score"}},
            {"name": "tags_again", "recipe": "text_classification",
             "args": {**common, "model_name_or_path": "{score}", "label_column_name": "tags"}},
            {"name": "more_tags", "recipe": "text_classification",
             "args": {**common, "model_name_or_path": "{tags_again}", "label_column_name": "tags",
                      "freeze_strategy": "head_only", "max_steps": 1, "learning_rate": 1e-12}},
        ]
    }  # fmt: skip
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    rows = chain_recipe.main([str(path), "--output_dir", str(out)])
    assert [(r["link"], r["metric"]) for r in rows] == [
        ("tags", "eval_f1_micro"), ("score", "eval_rmse"), ("tags_again", "eval_f1_micro"),
        ("more_tags", "eval_f1_micro"),
    ]  # fmt: skip
    configs = {r["link"]: yaml.safe_load((out / r["link"] / "warmstart_config.yaml").read_text()) for r in rows}
    assert [configs[n]["targets"]["problem_type"] for n in configs] == [MULTI_LABEL, REGRESSION, MULTI_LABEL,
                                                                      MULTI_LABEL]  # fmt: skip
    assert [r["name"] for r in configs["tags_again"]["lineage"]["runs"]] == ["tags", "score", "tags_again"]
    from safetensors.torch import load_file

    weights = {n: load_file(str(out / n / "model.safetensors")) for n in configs}
    assert weights["score"]["classifier.weight"].shape[0] == 1  # the regressor's own head
    assert weights["tags_again"]["classifier.weight"].shape[0] == 3
    encoder = "bert.encoder.layer.0.attention.self.query.weight"
    assert configs["score"]["model"]["model_name_or_path"] == str(out / "tags")  # the encoder travels on
    # a head-only link at a vanishing learning rate on the same shape and labels keeps the head it was given
    torch.testing.assert_close(weights["more_tags"]["classifier.weight"], weights["tags_again"]["classifier.weight"],
                               atol=1e-6, rtol=0)  # fmt: skip
    torch.testing.assert_close(weights["more_tags"][encoder], weights["tags_again"][encoder], atol=0, rtol=0)
