#!/usr/bin/env python
"""Multi-label and regression, worked on real data: warmstart's head_only and full fine-tuning against the plain
baseline a user would write, each scored on a held-out test split, with the wall time of each.

Data (nothing downloaded):

- **digits** (images): scikit-learn's handwritten digits at 64 px through the real ImageNet EfficientNet-Lite0
  weights, the quick-start's model and data. Multi-label: each digit tagged with what is true of it, ``even``,
  ``prime``, ``large`` (5 or more) and ``loop`` (a closed loop: 0, 6, 8, 9), a tag set built from the packaged labels
  (documented as such: the tags are functions of the digit). Regression: the digit's value as a number (0..9).
- **reviews** (text): generated review sentences (``_common.py``'s vocabulary) that mention some of four aspects
  (``plot``, ``acting``, ``music``, ``visuals``, each by one of several words) among sentiment words and filler,
  through MiniLM-L6. Multi-label: the aspects a review mentions. Regression: its rating, 1 + 4 x the share of its
  sentiment words that are positive, plus noise (sd 0.25).

Sides, every one on the same train split, scored on the same test split (warmstart's thresholds are tuned on the
validation split, never on test):

- ``warmstart head_only``: the recipe with ``--freeze_strategy head_only`` (cached backbone features), its default
  learning rate;
- ``warmstart full``: ``--freeze_strategy full``, its default learning rate (text) or 1e-3 (images, as the
  quick-start);
- baseline, text: the HF example's way (``problem_type`` set on the model, its own BCE / MSE loss on the raw targets,
  texts padded to 128, learning rate 5e-5); images: the textbook timm loop with ``BCEWithLogitsLoss`` / ``MSELoss``
  (learning rate 1e-3). The baseline's multi-label decisions are at 0.5, as a user's would be.

    python benchmarks/label_shapes.py [--pairs 1] [--only digits|reviews] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
from pathlib import Path

from _common import (
    _NEGATIVE,
    _NEUTRAL,
    _POSITIVE,
    add_common_arguments,
    as_flags,
    function_side,
    minilm_path,
    print_header,
    print_ratios,
    print_table,
    ratio_line,
    recipe_side,
    run_pairs,
    spread,
)

DIGIT_TAGS = {"even": {0, 2, 4, 6, 8}, "prime": {2, 3, 5, 7}, "large": {5, 6, 7, 8, 9}, "loop": {0, 6, 8, 9}}
ASPECTS = {
    "plot": ("plot", "story", "script"),
    "acting": ("acting", "cast", "performances"),
    "music": ("music", "soundtrack", "score"),
    "visuals": ("visuals", "cinematography", "effects"),
}
SHAPES = {"multi_label": "multi_label_classification", "regression": "regression"}
HEADLINE = {"multi_label": "f1_micro", "regression": "rmse"}
IMAGE_SIZE = 64


def write_digit_tables(folder: Path, quick: bool) -> dict[str, Path]:
    """The digits as PNGs and train / validation / test tables (``image``, ``tags``, ``value``); validation and test
    are the two halves of the quick-start's held-out fifth."""
    from warmstart.data.digits import digits_image_dataset

    splits = digits_image_dataset(image_size=IMAGE_SIZE)
    held_out = splits["validation"]
    half = len(held_out) // 2
    parts = {
        "train": splits["train"],
        "validation": held_out.select(range(half)),
        "test": held_out.select(range(half, len(held_out))),
    }
    tables = {}
    for split, data in parts.items():
        if quick:
            data = data.select(range(min(len(data), 48 if split == "train" else 24)))
        rows = []
        for index, row in enumerate(data):
            digit = int(data.features["label"].names[row["label"]])
            name = f"{split}/{index}.png"
            (folder / split).mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / name)
            tags = [tag for tag, digits in DIGIT_TAGS.items() if digit in digits]
            rows.append({"image": name, "tags": json.dumps(tags), "value": float(digit)})
        tables[split] = _write_csv(folder / f"{split}.csv", rows)
    return tables


def write_review_tables(folder: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Generated reviews (``text``, ``aspects``, ``rating``), see the module docstring."""
    tables = {}
    for offset, (split, size) in enumerate(sizes.items()):
        rng = random.Random(seed + offset)
        rows = []
        for _ in range(size):
            mentioned = [aspect for aspect in ASPECTS if rng.random() < 0.4]
            cues = rng.randint(1, 5)
            positive = sum(rng.random() < rng.random() for _ in range(cues))
            words = [rng.choice(_POSITIVE) for _ in range(positive)] + [
                rng.choice(_NEGATIVE) for _ in range(cues - positive)
            ]
            words += [rng.choice(ASPECTS[a]) for a in mentioned]
            words += [rng.choice(_NEUTRAL) for _ in range(rng.randint(6, 30))]
            rng.shuffle(words)
            rating = 1 + 4 * positive / cues + rng.gauss(0, 0.25)
            rows.append({"text": " ".join(words), "aspects": json.dumps(mentioned), "rating": round(rating, 3)})
        tables[split] = _write_csv(folder / f"{split}.csv", rows)
    return tables


def _write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _sides(dataset: str, shape: str, tables: dict[str, Path], model: str, quick: bool) -> list:
    column = {
        "digits": {"multi_label": "tags", "regression": "value"},
        "reviews": {"multi_label": "aspects", "regression": "rating"},
    }
    label = column[dataset][shape]
    epochs = 1 if quick else (3 if dataset == "digits" else 2)
    common = as_flags(
        model_name_or_path=model,
        train_file=tables["train"],
        validation_file=tables["validation"],
        test_file=tables["test"],
        label_column_name=label,
        problem_type=SHAPES[shape],
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        seed=42,
        use_cpu=True,
        precision="fp32",
    )
    recipe = "image_classification.py" if dataset == "digits" else "text_classification.py"
    # images: the quick-start's settings (crops of 80-100 %, no flips: digits are not mirror images; 1e-3 for full)
    size = as_flags(image_size=IMAGE_SIZE) if dataset == "digits" else []
    full = (
        ["--random_crop_scale", "0.8", "1.0", "--hflip", "0", "--learning_rate", "1e-3"] if dataset == "digits" else []
    )
    name = f"{dataset} {shape}"
    sides = [
        recipe_side(f"{name}: warmstart head_only", recipe, [*common, *size, "--freeze_strategy", "head_only"]),
        recipe_side(f"{name}: warmstart full", recipe, [*common, *size, "--freeze_strategy", "full", *full]),
    ]
    baseline = dict(
        model_dir=model,
        train_file=str(tables["train"]),
        test_file=str(tables["test"]),
        label_column=label,
        problem_type=SHAPES[shape],
        epochs=epochs,
        batch_size=32,
        seed=42,
    )
    if dataset == "digits":
        baseline.update(image_size=IMAGE_SIZE, learning_rate=1e-3)
        sides.append(
            function_side(f"{name}: textbook timm loop", "_baselines:textbook_timm_loop_for_shape", **baseline)
        )
    else:
        baseline.update(learning_rate=5e-5)
        sides.append(function_side(f"{name}: HF example", "_baselines:hf_text_trainer_for_shape", **baseline))
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, default_pairs=1)
    parser.add_argument("--only", choices=("digits", "reviews"), help="one of the two data sets")
    cli = parser.parse_args()
    if cli.quick:
        cli.pairs = 1
    from warmstart.quickstart import write_efficientnet_lite0_imagenet

    with tempfile.TemporaryDirectory(prefix="warmstart-shapes-") as root:
        root = Path(root)
        sides = []
        if cli.only in (None, "digits"):
            tables = write_digit_tables(root / "digits", cli.quick)
            backbone = str(write_efficientnet_lite0_imagenet(root / "efficientnet_lite0_imagenet"))
            for shape in SHAPES:
                sides += _sides("digits", shape, tables, backbone, cli.quick)
        if cli.only in (None, "reviews"):
            sizes = (
                {"train": 64, "validation": 32, "test": 32}
                if cli.quick
                else {"train": 1000, "validation": 300, "test": 500}
            )
            tables = write_review_tables(root / "reviews", sizes)
            for shape in SHAPES:
                sides += _sides("reviews", shape, tables, minilm_path(), cli.quick)
        pairs = list(run_pairs(sides, cli.pairs))

    print_header(
        "label_shapes: multi-label and regression, warmstart against the plain baseline",
        [
            f"digits: scikit-learn digits at {IMAGE_SIZE} px, ImageNet EfficientNet-Lite0; tags "
            "even/prime/large/loop, value 0..9; 1,437 train / 180 validation / 180 test",
            "reviews: generated reviews, MiniLM-L6; aspects plot/acting/music/visuals, rating 1..5; "
            "1,000 train / 300 validation / 500 test",
            "every side scored on test; warmstart's multi-label thresholds tuned on validation, the baseline's 0.5",
        ],
        cli.quick,
    )
    rows, lines = [], []
    for side in sides:
        runs = [pair[side.name] for pair in pairs]
        shape = "multi_label" if "multi_label" in side.name else "regression"
        metric = f"test_{HEADLINE[shape]}"
        rows.append(
            [
                side.name,
                spread([r[metric] for r in runs], "{:.4f}"),
                spread([r.wall_s for r in runs], "{:.1f}"),
                spread([r.peak_rss_mib for r in runs], "{:,.0f}"),
            ]
        )
    for index in range(0, len(sides), 3):
        head_only, full, baseline = (s.name for s in sides[index : index + 3])
        lines.append(
            ratio_line(
                f"wall time, {baseline} / {head_only}", [p[baseline].wall_s / p[head_only].wall_s for p in pairs]
            )
        )
        lines.append(
            ratio_line(f"wall time, {baseline} / {full}", [p[baseline].wall_s / p[full].wall_s for p in pairs])
        )
    print_table(["side", "test metric (f1_micro or rmse)", "wall s", "peak RSS MiB"], rows)
    print_ratios(lines, len(pairs), cli.quick)


if __name__ == "__main__":
    main()
