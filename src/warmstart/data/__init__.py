"""Data, from where users keep it to the batches a model takes, one concept a module:

- :mod:`~warmstart.data.sources`: reading tables (encodings, trimmed headers) and image folders (a class per
  first-level folder of each split), image paths resolved against the table that names them;
- :mod:`~warmstart.data.decoding`: images decoded as cameras and tools write them (EXIF orientation, first frame,
  every PIL mode);
- :mod:`~warmstart.data.splits`: the splits a recipe names, a seeded validation split when there is none, the limits;
- :mod:`~warmstart.data.leakage`: the checks before training (evaluation examples also in train, conflicting
  labels, label shift), with :mod:`~warmstart.data.image_hashes` and :mod:`~warmstart.data.label_shift`;
- :mod:`~warmstart.data.columns`: column checks and names for messages;
- :mod:`~warmstart.data.labels`: single-label encoding;
- :mod:`~warmstart.data.targets`: the label shape (single-label, multi-label, regression) and its encoding;
- :mod:`~warmstart.data.text`: text columns, tokenization, the padding collator;
- :mod:`~warmstart.data.vision`: image columns, transforms and the collator.
"""

from warmstart.data.columns import LABEL_COLUMN
from warmstart.data.decoding import load_image
from warmstart.data.labels import encode_labels
from warmstart.data.leakage import ON_LEAKAGE, check_splits, number_rows
from warmstart.data.splits import (
    check_not_empty,
    limit_samples,
    load_checked_splits,
    load_labeled_splits,
    load_raw_splits,
    load_unlabeled_splits,
    make_validation_split,
    table_dirs,
)
from warmstart.data.targets import (
    as_number,
    encode_targets,
    infer_problem_type,
    label_columns,
    read_label_sets,
    target_scale,
)
from warmstart.data.text import LENGTH_COLUMN, TextCollator, check_text_cells, resolve_text_columns, tokenize_splits
from warmstart.data.vision import (
    TRAIN_MARKER,
    attach_image_transforms,
    check_images,
    image_collate,
    image_transforms,
    resolve_image_column,
)

__all__ = [
    "LABEL_COLUMN",
    "ON_LEAKAGE",
    "LENGTH_COLUMN",
    "TRAIN_MARKER",
    "TextCollator",
    "as_number",
    "attach_image_transforms",
    "check_images",
    "check_not_empty",
    "check_splits",
    "check_text_cells",
    "encode_labels",
    "encode_targets",
    "image_collate",
    "image_transforms",
    "infer_problem_type",
    "label_columns",
    "limit_samples",
    "load_image",
    "load_checked_splits",
    "load_labeled_splits",
    "load_raw_splits",
    "load_unlabeled_splits",
    "make_validation_split",
    "number_rows",
    "read_label_sets",
    "resolve_image_column",
    "resolve_text_columns",
    "table_dirs",
    "target_scale",
    "tokenize_splits",
]
