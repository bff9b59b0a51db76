"""Leakage and data checks before training (:mod:`warmstart.data.leakage`): duplicates planted in tiny data are found
at their rows (exact and near texts, text pairs, identical and slightly changed images), conflicting labels and label
shift are measured for every label shape, ``--on_leakage`` warns, drops exactly the planted rows or refuses in one
line, and the text recipe runs the check on the data it loads."""

from __future__ import annotations

import logging
import math
import random
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import _sentences, text_data_flags, trainer_flags, write_text_csv
from datasets import ClassLabel, Dataset, DatasetDict
from PIL import Image

from warmstart import DataArguments, WarmstartError
from warmstart.data.leakage import check_splits, number_rows
from warmstart.data.splits import load_checked_splits
from warmstart.problems import MULTI_LABEL, REGRESSION, SINGLE_LABEL, LabelSpace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import text_classification  # noqa: E402

SENTIMENT = LabelSpace(SINGLE_LABEL, ["neg", "pos"])


def _recordable(report: dict) -> bool:
    """Whether the report is plain data, as a run's YAML record takes it (no numpy scalars)."""
    return yaml.safe_load(yaml.safe_dump(report)) == report


def _texts(n: int, seed: int) -> list[str]:
    """``n`` distinct sentences of made-up words (no two alike, however normalised)."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(10**6)}" for _ in range(6)) for _ in range(n)]


def _split(columns: dict[str, list], names: list[str] | None = None) -> Dataset:
    """A split with single-label ``labels`` (class ids of ``names``, default neg / pos)."""
    return Dataset.from_dict(columns).cast_column("labels", ClassLabel(names=names or SENTIMENT.names))


def _text_splits(train: list[str], validation: list[str], test: list[str] | None = None) -> DatasetDict:
    splits = {
        "train": _split({"text": train, "labels": [i % 2 for i in range(len(train))]}),
        "validation": _split({"text": validation, "labels": [i % 2 for i in range(len(validation))]}),
    }
    if test is not None:
        splits["test"] = _split({"text": test, "labels": [i % 2 for i in range(len(test))]})
    return number_rows(DatasetDict(splits))


def _planted() -> tuple[list[str], list[str]]:
    """30 train texts; 10 validation texts of which rows 2 and 5 (from 1) copy train rows 4 and 8 exactly (up to
    surrounding whitespace), rows 7 and 9 are near copies of train rows 11 (case, punctuation, spacing) and 20
    (full-width letters, NFKC), and row 10 differs from train row 12 by one word."""
    train, validation = _texts(30, 0), _texts(10, 1)
    validation[1] = "  " + train[3] + "\n"
    validation[4] = train[7]
    validation[6] = train[10].upper().replace(" ", " ,  ", 2) + "!!"
    validation[8] = train[19].translate({ord(c): ord(c) + 0xFEE0 for c in "w0123456789"})
    validation[9] = train[11].rsplit(" ", 1)[0] + " other"
    return train, validation


def test_exact_and_near_text_duplicates_are_found_at_their_rows():
    train, validation = _planted()
    _, report = check_splits(_text_splits(train, validation), SENTIMENT, text_columns=["text"])
    found = report["duplicates"]["validation"]
    assert (found["examples"], found["exact"], found["near"], found["dropped"]) == (10, 2, 2, 0)
    assert found["e.g."] == [
        {"row": 2, "train_row": 4, "match": "exact"},
        {"row": 5, "train_row": 8, "match": "exact"},
        {"row": 7, "train_row": 11, "match": "near"},
    ]
    assert report["inputs"] == "text"


def test_text_pairs_are_hashed_together():
    premises, hypotheses = _texts(6, 0), _texts(6, 1)
    head, rest = hypotheses[4].split(" ", 1)
    fresh = _texts(2, 2)
    validation = [
        (premises[1], hypotheses[2]),  # each text is in train, not as this pair
        (hypotheses[2], premises[2]),  # a train pair, swapped
        (premises[3], hypotheses[3]),  # train row 4
        (premises[4] + " " + head, rest),  # train row 5 with the boundary between its texts moved
        (premises[5].upper(), hypotheses[5] + " !"),  # train row 6, near
        (fresh[0], fresh[1]),
    ]
    train = _split({"premise": premises, "hypothesis": hypotheses, "labels": [0, 1] * 3})
    validation = _split(
        {"premise": [p for p, _ in validation], "hypothesis": [h for _, h in validation], "labels": [0] * 6}
    )
    splits = number_rows(DatasetDict(train=train, validation=validation))
    _, report = check_splits(splits, SENTIMENT, text_columns=["premise", "hypothesis"])
    found = report["duplicates"]["validation"]
    assert report["inputs"] == "text pairs"
    assert (found["exact"], found["near"]) == (1, 1)
    assert found["e.g."] == [{"row": 3, "train_row": 4, "match": "exact"}, {"row": 5, "train_row": 6, "match": "near"}]


def _pattern(seed: int) -> np.ndarray:
    """A 64 x 64 RGB image of random 8 x 8 blocks: structure a difference hash sees."""
    blocks = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))


def _image_split(folder: Path, images: list[tuple[np.ndarray, str, int]], labels: list[int]) -> Dataset:
    """Images saved under ``folder`` (``(pixels, format, jpeg quality)``), as an ``Image`` column with labels."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (pixels, kind, quality) in enumerate(images):
        path = folder / f"{i}.{kind}"
        Image.fromarray(pixels).save(path, quality=quality) if kind == "jpg" else Image.fromarray(pixels).save(path)
        paths.append(str(path))
    data = Dataset.from_dict({"image": paths, "labels": labels}).cast_column("image", datasets.Image())
    return data.cast_column("labels", ClassLabel(names=SENTIMENT.names))


def _flat(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((64, 64, 3), rgb, dtype=np.uint8)


def test_identical_and_slightly_changed_images_are_found(tmp_path):
    patterns = [_pattern(seed) for seed in range(6)]
    train = [(p, "png", 0) for p in patterns] + [(_flat((200, 30, 30)), "png", 0)] * 2
    train[1] = (patterns[1], "jpg", 95)
    validation = [
        (patterns[2], "png", 0),  # the same pixels as train row 3
        (patterns[1], "jpg", 50),  # train row 2 re-saved at another JPEG quality
        (np.minimum(patterns[4].astype(int) + 1, 255).astype(np.uint8), "png", 0),  # train row 5, one level brighter
        (_pattern(10), "png", 0),
        (_pattern(11), "jpg", 80),
        (_flat((30, 30, 200)), "png", 0),  # flat, like train row 7, another colour: not the same image
        (_flat((200, 30, 30)), "png", 0),  # train row 7's pixels
    ]
    splits = DatasetDict(
        train=_image_split(tmp_path / "train", train, [0, 1] * 3 + [0, 1]),  # rows 7 and 8: one image, two labels
        validation=_image_split(tmp_path / "validation", validation, [0] * 7),
    )
    _, report = check_splits(number_rows(splits), SENTIMENT, image_column="image")
    assert _recordable(report)
    found = report["duplicates"]["validation"]
    assert report["inputs"] == "images"
    assert (found["exact"], found["near"]) == (2, 2)
    assert found["e.g."] == [
        {"row": 1, "train_row": 3, "match": "exact"},
        {"row": 2, "train_row": 2, "match": "near"},
        {"row": 3, "train_row": 5, "match": "near"},
    ]
    assert "radius_search" not in report
    conflicts = report["conflicting_labels"]
    assert conflicts["train"] == {"inputs": 1, "rows": 2, "e.g.": [[7, 8]]}
    assert conflicts["validation"] == {"rows": 2, "e.g.": [{"row": 2, "train_row": 2}, {"row": 7, "train_row": 7}]}


def _cells(grid: np.ndarray) -> np.ndarray:
    """A 72 x 64 grey image of 8 x 9 cells of 8 x 8 pixels: its 9 x 8 thumbnail is ``grid`` itself."""
    return np.repeat(np.kron(grid.astype(np.uint8), np.ones((8, 8), dtype=np.uint8))[:, :, None], 3, axis=2)


def test_images_a_few_hash_bits_apart_are_near_duplicates_within_the_radius(tmp_path):
    grid = np.random.default_rng(0).permutation(72).reshape(8, 9) * 3 + 10
    grid[0, :2] = (100, 110)
    changed = grid.copy()
    changed[0, 0] = 120  # the first cell has no left neighbour: one comparison, one hash bit, flips
    splits = DatasetDict(
        train=_image_split(tmp_path / "train", [(_cells(grid), "png", 0), (_pattern(1), "png", 0)], [0, 1]),
        validation=_image_split(
            tmp_path / "validation", [(_pattern(2), "png", 0), (_cells(changed), "png", 0)], [0, 1]
        ),
    )
    _, within = check_splits(number_rows(splits), SENTIMENT, image_column="image")
    _, identical_only = check_splits(number_rows(splits), SENTIMENT, image_column="image", hash_radius=0)
    assert within["duplicates"]["validation"]["e.g."] == [{"row": 2, "train_row": 1, "match": "near"}]
    assert identical_only["duplicates"]["validation"]["near"] == 0


def test_conflicting_labels_are_found_within_train_and_across_splits():
    texts = _texts(10, 0)
    texts[7] = texts[2].upper() + "!"  # train row 8: train row 3's input, the other label
    texts[9] = texts[4]  # train row 10: train row 5's input, the other label
    fresh = _texts(1, 1)[0]
    splits = DatasetDict(
        train=_split({"text": texts, "labels": [0, 1] * 5}),
        validation=_split({"text": [texts[0], texts[1], texts[2], fresh], "labels": [1, 1, 0, 0]}),
    )
    _, report = check_splits(number_rows(splits), SENTIMENT, text_columns=["text"])
    conflicts = report["conflicting_labels"]
    assert conflicts["train"] == {"inputs": 2, "rows": 4, "e.g.": [[3, 8], [5, 10]]}
    # row 1: train says 0; row 2 agrees with train; row 3: train says both
    assert conflicts["validation"] == {"rows": 2, "e.g.": [{"row": 1, "train_row": 1}, {"row": 3, "train_row": 3}]}


def test_single_label_shift_is_the_total_variation_and_names_classes_rare_in_train():
    names = ["a", "b", "c"]
    train_labels, validation_labels = [0] * 20 + [1] * 19 + [2], [0] * 2 + [1] * 5 + [2] * 3
    splits = DatasetDict(
        train=_split({"text": _texts(40, 0), "labels": train_labels}, names),
        validation=_split({"text": _texts(10, 1), "labels": validation_labels}, names),
        test=_split({"text": _texts(40, 2), "labels": train_labels}, names),
    )
    _, report = check_splits(number_rows(splits), LabelSpace(SINGLE_LABEL, names), text_columns=["text"])
    assert _recordable(report)
    shift = report["label_shift"]["validation"]
    assert shift["total_variation"] == pytest.approx(0.3)
    assert shift["shifted"]
    assert shift["rare_in_train"] == [{"label": "c", "train": 0.025, "frequency": 0.3}]
    same = report["label_shift"]["test"]
    assert (same["total_variation"], same["shifted"], same["rare_in_train"]) == (0.0, False, [])


def _with_labels(texts: list[str], labels: list, length: int | None) -> Dataset:
    feature = datasets.Sequence(datasets.Value("float32"), length=length) if length else datasets.Value("float32")
    return Dataset.from_dict({"text": texts, "labels": labels}).cast_column("labels", feature)


def test_multi_label_shift_compares_each_label_s_frequency():
    train = [[float(i % 2), float(i < 2), float(i % 2 == 0)] for i in range(20)]  # x 0.5, y 0.1, z 0.5
    validation = [[float(i % 2), float(i < 6), float(i % 2 == 0)] for i in range(10)]  # x 0.5, y 0.6, z 0.5
    splits = DatasetDict(
        train=_with_labels(_texts(20, 0), train, 3), validation=_with_labels(_texts(10, 1), validation, 3)
    )
    labels = LabelSpace(MULTI_LABEL, ["x", "y", "z"])
    _, report = check_splits(number_rows(splits), labels, text_columns=["text"])
    assert _recordable(report)
    shift = report["label_shift"]["validation"]
    assert shift["largest"][0] == {"label": "y", "train": 0.1, "frequency": 0.6}
    assert shift["mean_absolute_difference"] == pytest.approx(0.5 / 3, abs=1e-4)
    assert (shift["shifted_labels"], shift["shifted"]) == (["y"], True)
    assert [r["label"] for r in shift["rare_in_train"]] == ["y"]


def test_regression_shift_is_a_standardized_mean_difference():
    train, validation = [float(v) for v in range(20)], [float(v) for v in range(15, 25)]
    splits = DatasetDict(
        train=_with_labels(_texts(20, 0), train, None), validation=_with_labels(_texts(10, 1), validation, None)
    )
    _, report = check_splits(number_rows(splits), LabelSpace(REGRESSION, ["score"]), text_columns=["text"])
    assert _recordable(report)
    (target,) = report["label_shift"]["validation"]["targets"]
    pooled = math.sqrt((np.std(train) ** 2 + np.std(validation) ** 2) / 2)
    assert target["standardized_mean_difference"] == pytest.approx(10 / pooled, abs=1e-4)
    assert (target["train_mean"], target["mean"], target["shifted"]) == (9.5, 19.5, True)


# ------------------------------------------------------------------------------------------------------ on_leakage


def test_drop_removes_exactly_the_planted_rows_and_never_train_rows(caplog):
    train, validation = _planted()
    test = _texts(5, 3)
    test[2] = train[0]
    splits = _text_splits(train, validation, test)
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        kept, report = check_splits(splits, SENTIMENT, text_columns=["text"], on_leakage="drop")
    planted = {1, 4, 6, 8}
    assert kept["validation"]["text"] == [t for i, t in enumerate(validation) if i not in planted]
    assert kept["test"]["text"] == [t for i, t in enumerate(test) if i != 2]
    assert kept["train"]["text"] == train
    assert all("_warmstart_row" not in data.column_names for data in kept.values())
    assert (report["duplicates"]["validation"]["dropped"], report["duplicates"]["test"]["dropped"]) == (4, 1)
    assert "dropped 4 validation example(s) (2 exact, 2 near) and 1 test example(s) (1 exact, 0 near)" in caplog.text


def test_refuse_is_one_line_with_the_counts_and_where_to_look():
    train, validation = _planted()
    with pytest.raises(WarmstartError) as refused:
        check_splits(_text_splits(train, validation), SENTIMENT, text_columns=["text"], on_leakage="refuse")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("4 validation example(s) (2 exact, 2 near) are duplicates of train examples (e.g. ")
    shown = repr(train[3][:40] + "...")  # the text, whitespace collapsed, clipped
    assert f"validation row 2 ({shown}) = train row 4 ({shown})" in message
    assert message.endswith("remove them, or pass --on_leakage drop / warn")


def test_warn_logs_the_count_and_keeps_every_row(caplog):
    train, validation = _planted()
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        kept, report = check_splits(_text_splits(train, validation), SENTIMENT, text_columns=["text"])
    assert len(kept["validation"]) == 10 and report["duplicates"]["validation"]["dropped"] == 0
    (line,) = [r.getMessage() for r in caplog.records if "also in train" in r.getMessage()]
    assert line.startswith("4 validation example(s) (2 exact, 2 near) are also in train (e.g. validation row 2")


def test_dropping_every_evaluation_example_is_refused():
    texts = _texts(6, 0)
    with pytest.raises(WarmstartError, match="every validation example is also in train"):
        check_splits(_text_splits(texts, texts[:3]), SENTIMENT, text_columns=["text"], on_leakage="drop")


def test_an_unknown_on_leakage_is_refused():
    with pytest.raises(WarmstartError, match="--on_leakage 'ignore' is not one of warn, drop, refuse"):
        DataArguments(on_leakage="ignore")
    with pytest.raises(WarmstartError, match="--on_leakage 'ignore'"):
        check_splits(_text_splits(["a"], ["b"]), SENTIMENT, text_columns=["text"], on_leakage="ignore")


def test_a_validation_split_held_out_of_train_is_named_by_train_file_rows(tmp_path, caplog):
    rows = _sentences(20, 0)
    path = write_text_csv(tmp_path / "train.csv", rows + rows)  # every text twice: file rows i and i + 20
    args = DataArguments(train_file=str(path), train_val_split=0.5)
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        splits, _, report = load_checked_splits(args, seed=0)
    train_texts = set(splits["train"]["text"])
    expected = sum(text in train_texts for text in splits["validation"]["text"])
    found = report["duplicates"]["validation"]
    assert expected > 0 and found["exact"] == expected and found["rows_of"] == "train"
    for example in found["e.g."]:  # file rows, counted from 1: the twin is 20 rows away
        assert abs(example["row"] - example["train_row"]) == 20
    assert "(held out as validation)" in caplog.text


def test_twenty_thousand_texts_are_checked_with_every_planted_duplicate_found():
    texts = _texts(20_000, 0)
    for i in range(100):  # validation rows 1..50 copy train rows, 51..100 are near copies
        texts[17_000 + i] = texts[i * 7] if i < 50 else texts[i * 7].title() + "."
    splits = _text_splits(texts[:17_000], texts[17_000:])
    _, report = check_splits(splits, SENTIMENT, text_columns=["text"])
    found = report["duplicates"]["validation"]
    assert (found["examples"], found["exact"], found["near"]) == (3_000, 50, 50)
    assert found["e.g."][1] == {"row": 2, "train_row": 8, "match": "exact"}


# ---------------------------------------------------------------------------------------------------- the recipe


def test_the_text_recipe_warns_about_a_planted_duplicate_and_drops_it_when_asked(tiny_bert, tmp_path, caplog):
    train, validation = _sentences(48, 0), _sentences(16, 1)
    validation[2], validation[7] = train[4], train[11]
    files = {
        "train": write_text_csv(tmp_path / "train.csv", train),
        "validation": write_text_csv(tmp_path / "v.csv", validation),
    }
    data = text_data_flags(tiny_bert, files)
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        warned = text_classification.main([*data, *trainer_flags(tmp_path / "warn")])
    warning = "2 validation example(s) (2 exact, 0 near) are also in train (e.g. validation row 3 ("
    assert f"{warning}{train[4][0]!r}) = train row 5 ({train[4][0]!r}))" in caplog.text
    assert warned["eval_samples"] == 16

    dropped = text_classification.main([*data, *trainer_flags(tmp_path / "drop"), "--on_leakage", "drop"])
    assert dropped["eval_samples"] == 14
    recorded = yaml.safe_load((tmp_path / "drop" / "warmstart_config.yaml").read_text())
    assert recorded["data"]["on_leakage"] == "drop"
    assert recorded["data_checks"]["duplicates"]["validation"]["exact"] == 2
    assert recorded["data_checks"]["duplicates"]["validation"]["dropped"] == 2
    _, _, report = load_checked_splits(
        DataArguments(train_file=str(files["train"]), validation_file=str(files["validation"])), seed=0
    )
    assert report["duplicates"]["validation"]["e.g."][:2] == [
        {"row": 3, "train_row": 5, "match": "exact"},
        {"row": 8, "train_row": 12, "match": "exact"},
    ]
