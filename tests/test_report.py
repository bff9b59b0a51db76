"""Tests for the evaluation report and the comparison plot (``warmstart.report``): the numbers against
scikit-learn, and the PNGs read back with their documented pixel sizes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import classification_report, roc_auc_score

from warmstart.errors import WarmstartError
from warmstart.report import confusion_counts, write_comparison_plot, write_evaluation_report

# the documented pixel sizes (module constants: inches times dpi)
CONFUSION_PX = (1200, 1200)
CURVES_PX = (800, 600)
ROC_PX = (600, 600)
COMPARISON_PX = (800, 600)

HISTORY = [
    *({"loss": 2.0 / step, "learning_rate": 1e-3, "epoch": step / 10, "step": step} for step in range(1, 11)),
    {"eval_loss": 0.9, "eval_accuracy": 0.6, "eval_f1_macro": 0.5, "epoch": 0.5, "step": 5},
    {"eval_loss": 0.7, "eval_accuracy": 0.8, "eval_f1_macro": 0.7, "epoch": 1.0, "step": 10},
    {"train_runtime": 1.5, "train_loss": 0.6, "epoch": 1.0, "step": 10},  # the Trainer's closing summary
]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # decodes the whole file, not only its header
        return image.size


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _predictions(num_classes: int, n: int, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label_ids = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), label_ids] += signal
    return label_ids, logits


def test_confusion_counts_rows_are_true_classes_columns_predictions():
    counts = confusion_counts(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 1]), 4)
    assert counts.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(WarmstartError, match="outside 0..2"):
        confusion_counts(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(WarmstartError, match="2 labels but 3 predictions"):
        confusion_counts(np.array([0, 1]), np.array([0, 1, 1]), 3)


def test_report_pngs_decode_with_documented_sizes(tmp_path):
    label_ids, logits = _predictions(2, 40)
    report = write_evaluation_report(tmp_path, ["neg", "pos"], label_ids, logits, HISTORY)
    names = [name for _, name in report.images]
    assert names == ["confusion_matrix.png", "training_curves.png", "roc_curve.png"]
    expected = {"confusion_matrix.png": CONFUSION_PX, "training_curves.png": CURVES_PX, "roc_curve.png": ROC_PX}
    assert {name: _size(tmp_path / name) for name in names} == expected
    assert all(caption for caption, _ in report.images)


def test_confusion_matrix_image_follows_the_predictions(tmp_path):
    labels = ["a", "b", "c"]
    label_ids = np.array([0, 1, 2, 0, 1, 2])
    right, wrong = np.eye(3)[label_ids], np.eye(3)[[1, 2, 0, 1, 2, 0]]
    for name, probabilities in (("right", right), ("wrong", wrong)):
        write_evaluation_report(tmp_path / name, labels, label_ids, probabilities, [])
    # drawing is deterministic (the 21-class case below gets equal pictures), so a difference is in the content
    assert not np.array_equal(*(_pixels(tmp_path / name / "confusion_matrix.png") for name in ("right", "wrong")))


@pytest.mark.parametrize(("num_classes", "annotated"), [(3, True), (21, False)])
def test_counts_are_written_in_the_cells_up_to_twenty_classes(tmp_path, num_classes, annotated):
    # every prediction right and the same total: the colours (shares of the true class) and the title are the same,
    # only the counts in the cells differ (class 0 has 2 examples and class 1 has 4, or the other way round)
    labels = [f"c{i}" for i in range(num_classes)]
    for name, label_ids in (("first", [0, 0, 1, 1, 1, 1]), ("second", [0, 0, 0, 0, 1, 1])):
        write_evaluation_report(tmp_path / name, labels, np.array(label_ids), np.eye(num_classes)[label_ids], [])
    first, second = (_pixels(tmp_path / name / "confusion_matrix.png") for name in ("first", "second"))
    assert np.array_equal(first, second) is not annotated


def test_classification_report_matches_sklearn_and_lists_absent_classes(tmp_path):
    labels = ["cat", "dog", "bird"]  # no bird in this split, and none predicted
    label_ids = np.array([0, 0, 0, 1, 1, 1, 1])
    predictions = np.array([0, 0, 1, 1, 1, 0, 1])
    report = write_evaluation_report(tmp_path, labels, label_ids, np.eye(3)[predictions], [])
    written = json.loads((tmp_path / "classification_report.json").read_text())
    expected = classification_report(
        label_ids, predictions, labels=[0, 1, 2], target_names=labels, output_dict=True, zero_division=0
    )
    assert written == expected and report.per_class == expected  # JSON keeps floats exactly
    assert written["bird"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert written["cat"]["recall"] == pytest.approx(2 / 3)
    assert written["dog"]["precision"] == pytest.approx(3 / 4)
    assert written["accuracy"] == pytest.approx(5 / 7)
    # float ids, as a Trainer may hand them over, are the same classes
    again = write_evaluation_report(tmp_path / "float", labels, label_ids.astype(float), np.eye(3)[predictions], [])
    assert again.per_class == expected


def test_binary_roc_auc_equals_sklearn(tmp_path):
    label_ids, logits = _predictions(2, 60, seed=3, signal=0.8)
    report = write_evaluation_report(tmp_path, ["neg", "pos"], label_ids, logits, HISTORY)
    assert report.roc_auc == pytest.approx(roc_auc_score(label_ids, _softmax(logits)[:, 1]))
    assert 0.5 < report.roc_auc < 1.0  # a real curve, not a degenerate one
    assert _size(tmp_path / "roc_curve.png") == ROC_PX


@pytest.mark.parametrize(
    ("labels", "label_ids"),
    [(["a", "b", "c"], np.array([0, 1, 2, 1])), (["neg", "pos"], np.array([0, 0, 0, 0]))],
    ids=["multiclass", "binary-one-class-present"],
)
def test_no_roc_for_multiclass_or_a_single_present_class(tmp_path, labels, label_ids):
    logits = np.random.default_rng(0).normal(size=(len(label_ids), len(labels)))
    report = write_evaluation_report(tmp_path, labels, label_ids, logits, HISTORY)
    assert report.roc_auc is None
    assert not (tmp_path / "roc_curve.png").exists()
    assert [name for _, name in report.images] == ["confusion_matrix.png", "training_curves.png"]


def test_logits_and_probabilities_give_the_same_report(tmp_path):
    label_ids, logits = _predictions(2, 50, seed=1, signal=0.7)
    from_logits = write_evaluation_report(tmp_path / "logits", ["neg", "pos"], label_ids, logits, HISTORY)
    from_probs = write_evaluation_report(tmp_path / "probs", ["neg", "pos"], label_ids, _softmax(logits), HISTORY)
    assert from_logits.per_class == from_probs.per_class
    assert from_logits.markdown == from_probs.markdown
    assert from_logits.roc_auc == pytest.approx(from_probs.roc_auc)
    for name in ("confusion_matrix.png", "roc_curve.png"):
        assert np.array_equal(_pixels(tmp_path / "logits" / name), _pixels(tmp_path / "probs" / name))
    # a Trainer prediction tuple (logits, hidden states) is read as its logits
    from_tuple = write_evaluation_report(tmp_path / "tuple", ["neg", "pos"], label_ids, (logits, logits), HISTORY)
    assert from_tuple.per_class == from_logits.per_class


def test_training_curves_without_eval_without_train_loss_and_empty(tmp_path):
    label_ids, logits = _predictions(3, 12)
    histories = {
        "full": HISTORY,
        "no_eval": [entry for entry in HISTORY if not any(k.startswith("eval_") for k in entry)],
        "no_train_loss": [entry for entry in HISTORY if "loss" not in entry],
        "empty": [],
    }
    images = {}
    for name, history in histories.items():
        report = write_evaluation_report(tmp_path / name, ["a", "b", "c"], label_ids, logits, history)
        assert ("Training curves", "training_curves.png") in report.images
        assert _size(tmp_path / name / "training_curves.png") == CURVES_PX
        images[name] = _pixels(tmp_path / name / "training_curves.png")
    for first, second in [("full", "no_eval"), ("full", "no_train_loss"), ("no_eval", "empty")]:
        assert not np.array_equal(images[first], images[second]), (first, second)


def test_best_model_metric_accepts_the_eval_prefix_and_changes_the_curve(tmp_path):
    label_ids, logits = _predictions(3, 12)

    def curves(metric):
        directory = tmp_path / str(metric)
        write_evaluation_report(directory, ["a", "b", "c"], label_ids, logits, HISTORY, metric_for_best_model=metric)
        return _pixels(directory / "training_curves.png")

    f1_macro = curves("f1_macro")
    assert np.array_equal(f1_macro, curves("eval_f1_macro"))
    assert not np.array_equal(f1_macro, curves(None))  # the default: accuracy
    curves("not_logged")  # a metric missing from the history leaves a note, not a crash


def test_markdown_has_one_row_per_class_and_the_averages(tmp_path):
    labels = ["cat", "dog", "pipe|name"]
    label_ids = np.array([0, 1, 2, 2, 1])
    report = write_evaluation_report(tmp_path, labels, label_ids, np.eye(3)[[0, 1, 2, 1, 1]], [])
    rows = [line for line in report.markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| class | precision | recall | F1 | support |"
    assert rows[1:] == [
        "| cat | 1.000 | 1.000 | 1.000 | 1 |",
        "| dog | 0.667 | 1.000 | 0.800 | 2 |",
        "| pipe\\|name | 1.000 | 0.500 | 0.667 | 2 |",
        "| **macro avg** | 0.889 | 0.833 | 0.822 | 5 |",
        "| **weighted avg** | 0.867 | 0.800 | 0.787 | 5 |",
    ]
    assert "Accuracy: 0.8000" in report.markdown


def test_markdown_table_is_cut_after_fifty_classes_and_a_hundred_classes_render(tmp_path):
    labels = [f"class {i:03d} with a rather long descriptive name" for i in range(100)]
    label_ids, logits = _predictions(100, 400, signal=3.0)
    report = write_evaluation_report(tmp_path, labels, label_ids, logits, HISTORY)
    rows = [line for line in report.markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 50 + 2
    assert rows[50].startswith("| class 049") and rows[51].startswith("| **macro avg**")
    assert "50 more classes" in report.markdown
    assert _size(tmp_path / "confusion_matrix.png") == CONFUSION_PX
    assert len(json.loads((tmp_path / "classification_report.json").read_text())) == 100 + 3


def test_other_splits_get_their_own_file_names(tmp_path):
    label_ids, logits = _predictions(2, 30)
    report = write_evaluation_report(tmp_path, ["neg", "pos"], label_ids, logits, HISTORY, split="test")
    assert [name for _, name in report.images] == [
        "confusion_matrix_test.png",
        "training_curves.png",
        "roc_curve_test.png",
    ]
    assert (tmp_path / "classification_report_test.json").is_file()
    assert "test split" in report.markdown


def test_pyplot_is_never_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # any import of pyplot now fails
    label_ids, logits = _predictions(2, 20)
    write_evaluation_report(tmp_path, ["neg", "pos"], label_ids, logits, HISTORY)
    write_comparison_plot(
        [{"strategy": "full", "train_runtime": 1.0, "eval_accuracy": 0.5}], "accuracy", tmp_path / "c.png"
    )


@pytest.mark.parametrize(
    ("labels", "label_ids", "logits", "message"),
    [
        (["a", "b"], np.array([0, 1]), np.zeros((2, 3)), "do not match 2 classes"),
        (["a", "b"], np.array([0, 1, 1]), np.zeros((2, 2)), "3 labels but 2 predictions"),
        (["a", "b"], np.array([], dtype=int), np.zeros((0, 2)), "is empty"),
        (["a", "a"], np.array([0, 1]), np.zeros((2, 2)), "class names repeat"),
        (["a", "b"], np.array([0, 2]), np.zeros((2, 2)), "outside 0..1"),
        (["a", "b"], np.array([0.0, 0.5]), np.zeros((2, 2)), "not class ids"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, labels, label_ids, logits, message):
    with pytest.raises(WarmstartError, match=message):
        write_evaluation_report(tmp_path, labels, label_ids, logits, [])


_COLUMNS = ("strategy", "learning_rate", "train_runtime", "trainable_params", "eval_accuracy", "eval_loss")
ROWS = [
    dict(zip(_COLUMNS, values))
    for values in [
        ("head_only", 1e-3, 5.0, 1_290, 0.81, 0.62),
        ("full", 1e-4, 90.0, 40_000_000, 0.93, 0.35),
        ("bitfit", 1e-3, 30.0, 60_000, 0.88, 0.30),
        ("crashed", 1e-3, 2.0, 1_290),  # no metrics: the run failed
    ]
]


def test_comparison_plot_marks_the_best_and_skips_rows_without_the_metric(tmp_path):
    plot = write_comparison_plot(ROWS, "eval_accuracy", tmp_path / "comparison.png")
    assert plot.best["strategy"] == "full"
    assert [row["strategy"] for row in plot.plotted] == ["head_only", "full", "bitfit"]
    assert _size(plot.path) == COMPARISON_PX
    # the best is marked: the same metric and points with another best (the caller's choice) draw another picture
    other = write_comparison_plot(ROWS, "eval_accuracy", tmp_path / "other.png", best=ROWS[2])
    assert other.best is ROWS[2]
    assert not np.array_equal(_pixels(plot.path), _pixels(other.path))
    same = write_comparison_plot(ROWS, "eval_accuracy", tmp_path / "same.png", best=ROWS[1])
    assert np.array_equal(_pixels(plot.path), _pixels(same.path))


def test_comparison_plot_lower_is_better_for_a_loss_and_resolves_the_eval_prefix(tmp_path):
    plot = write_comparison_plot(ROWS, "loss", tmp_path / "comparison.png")
    assert plot.metric == "eval_loss"
    assert plot.best["strategy"] == "bitfit"
    assert write_comparison_plot(ROWS, "accuracy", tmp_path / "acc.png").best["strategy"] == "full"


def test_comparison_plot_reads_csv_strings(tmp_path):
    rows = [{key: str(value) for key, value in row.items()} for row in ROWS]
    rows[1]["eval_accuracy"] = ""  # a run that did not finish: an empty CSV cell
    plot = write_comparison_plot(rows, "eval_accuracy", tmp_path / "comparison.png")
    assert plot.best["strategy"] == "bitfit"
    assert len(plot.plotted) == 2


def test_comparison_plot_without_the_metric_is_an_empty_plot(tmp_path):
    plot = write_comparison_plot(ROWS, "f1_macro", tmp_path / "sub" / "comparison.png")
    assert plot.best is None and plot.plotted == []
    assert _size(plot.path) == COMPARISON_PX
    assert write_comparison_plot([], "accuracy", tmp_path / "none.png").best is None


def _crowd(n: int, seed: int = 0) -> list[dict]:
    """``n`` runs with nearly equal times and accuracies: unlabelled apart, their names would overlap."""
    rng = np.random.default_rng(seed)
    return [
        {
            "run": f"run{i:02d}-lr{10.0 ** -(i % 4 + 2):g}",
            "train_seconds": 100.0 + rng.normal(),
            "trainable_params": 10 ** (3 + i % 6),
            "eval_accuracy": 0.9 + 0.001 * rng.normal(),
        }
        for i in range(n)
    ]


def _label_boxes(plot) -> dict[str, object]:
    figure = plot.figure
    renderer = figure.canvas.get_renderer()
    return {text.get_text(): text.get_window_extent(renderer) for text in figure.axes[0].texts}


@pytest.mark.parametrize("n", [6, 16])
@pytest.mark.parametrize("level", [0.6, 0.9])  # far below the crowd, and right through it
def test_crowded_labels_do_not_overlap_and_the_majority_line_is_drawn(tmp_path, n, level):
    rows = _crowd(n)
    plot = write_comparison_plot(
        rows, "eval_accuracy", tmp_path / "c.png", time_key="train_seconds", name_key="run",
        reference=("majority class", level),
    )  # fmt: skip
    assert _size(plot.path) == COMPARISON_PX
    boxes = _label_boxes(plot)
    assert set(boxes) == {row["run"] for row in rows} | {f"majority class: {level:.3g}"}
    named = list(boxes.items())
    for i, (first, a) in enumerate(named):
        for second, b in named[i + 1 :]:
            assert not a.overlaps(b), (first, second)
    frame = plot.figure.axes[0].get_window_extent(plot.figure.canvas.get_renderer())
    assert all(frame.y0 <= box.y0 and box.y1 <= frame.y1 for box in boxes.values())
    # labels one above the other are in the order of their points: their leader lines do not cross
    for first in rows:
        for second in rows:
            a, b = boxes[first["run"]], boxes[second["run"]]
            if a.x0 < b.x1 and b.x0 < a.x1 and first["eval_accuracy"] < second["eval_accuracy"]:
                assert a.y1 <= b.y0, (first["run"], second["run"])
    lines = [line for line in plot.figure.axes[0].get_lines() if line.get_label() == "majority class"]
    assert len(lines) == 1 and set(lines[0].get_ydata()) == {level}


def test_labels_stay_beside_points_that_are_apart(tmp_path):
    plot = write_comparison_plot(ROWS, "eval_accuracy", tmp_path / "c.png")
    ax = plot.figure.axes[0]
    boxes = _label_boxes(plot)
    for row in plot.plotted:
        box = boxes[f"{row['strategy']} (lr {row['learning_rate']:g})"]  # several rates: each label shows its own
        y = ax.transData.transform((row["train_runtime"], row["eval_accuracy"]))[1]
        assert box.y0 < y < box.y1  # level with its point: nothing to make room for
    assert len(ax.get_lines()) == 0  # no leader lines, no reference line


def test_a_run_without_a_learning_rate_is_plotted_by_its_name(tmp_path):
    rows = [
        {"run": "head_only-lbfgs", "learning_rate": None, "train_seconds": 2.0, "trainable_params": 130,
         "eval_accuracy": 0.7},
        {"run": "full-lr5e-05", "learning_rate": 5e-5, "train_seconds": 50.0, "trainable_params": 10**7,
         "eval_accuracy": 0.8},
        {"run": "full-lr0.0005", "learning_rate": "", "train_seconds": "60", "trainable_params": 10**7,
         "eval_accuracy": "0.75"},
    ]  # fmt: skip
    plot = write_comparison_plot(rows, "accuracy", tmp_path / "c.png", time_key="train_seconds", name_key="run")
    assert plot.best["run"] == "full-lr5e-05" and len(plot.plotted) == 3
    assert set(_label_boxes(plot)) == {"head_only-lbfgs", "full-lr5e-05", "full-lr0.0005"}


def test_a_reference_that_is_not_a_number_draws_no_line(tmp_path):
    plot = write_comparison_plot(ROWS, "eval_accuracy", tmp_path / "c.png", reference=("majority class", None))
    assert not plot.figure.axes[0].get_lines()
