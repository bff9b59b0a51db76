"""Data as users lay it out: image folders at different depths and places, nested class folders, tables of image
paths run from another working directory, images as cameras and tools write them (EXIF orientation, every PIL mode,
animations, upper-case extensions), and text tables as spreadsheets export them (byte-order marks, UTF-16, other
encodings, padded headers, empty cells, labels of mixed types).

Every layout runs a real recipe from a working directory that is *not* the data's: it trains (labels and example
counts checked), or it is refused with the stated line (the refusals are in ``test_bad_inputs.py``'s table too).
Decoding is checked pixel by pixel, through each path that reads images: the training and evaluation transforms, the
feature cache's source splits (the same function, with the evaluation transform) and prediction.
"""

from __future__ import annotations

import codecs
import importlib.util
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import COLORS, trainer_flags, write_image_folder
from PIL import Image

from warmstart import DataArguments, WarmstartError, run_cli
from warmstart.data import attach_image_transforms, load_labeled_splits
from warmstart.data.decoding import BACKGROUND, load_image, to_channels
from warmstart.prediction import ImageRows, read_prediction_input

REPO = Path(__file__).resolve().parents[1]
IMAGE_MODEL = ["--model_name_or_path", "test_resnet", "--random_init", "--image_size", "32"]
CLASSES = sorted(COLORS)


def _load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"layout_recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPES = {name: _load_recipe(name) for name in ("image_classification", "text_classification", "predict")}
RECIPES["pretrain_autoencoder"] = _load_recipe("pretrain_autoencoder")
RECIPES["pretrain_mlm"] = _load_recipe("pretrain_mlm")


# ------------------------------------------------------------------------------------------------------- data makers


def _square(rgb: tuple[int, int, int], size: int = 24) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


def _class_images(root: Path, per_class: int = 3, suffix: str = ".png", nest: str = "") -> Path:
    """``root/<class>/<nest>/<i><suffix>``: one colour per class."""
    for name, rgb in COLORS.items():
        folder = root / name / nest
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _square(rgb).save(folder / f"{i}{suffix}", format="JPEG" if suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return root


def _image_table(table: Path, image_root: Path, relative_to: Path, rows_per_class: int = 4) -> Path:
    """A CSV of image paths written relative to ``relative_to`` (the table's folder, as datasets' metadata.csv)."""
    table.parent.mkdir(parents=True, exist_ok=True)
    _class_images(image_root, rows_per_class)
    lines = ["image,label"]
    for file in sorted(image_root.rglob("*.png")):
        lines.append(f"{file.relative_to(relative_to).as_posix()},{file.parent.name}")
    table.write_text("\n".join(lines) + "\n")
    return table


def _text_rows(n: int = 12) -> list[tuple[str, str]]:
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        rows.append((f"the movie was {'great fine' if positive else 'awful dull'} {i}", "pos" if positive else "neg"))
    return rows


def _csv(path: Path, rows: list[tuple], header=("text", "label"), encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(",".join(str(c) for c in row) for row in [header, *rows]) + "\n"
    path.write_bytes(body.encode(encoding))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _modes_folder(root: Path) -> Path:
    """Class folders whose images come in every PIL mode a tool writes (three colours, one class each)."""
    for name, rgb in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = _square(rgb)
        base.convert("L").save(folder / "l.png")
        base.convert("LA").save(folder / "la.png")
        base.convert("RGBA").save(folder / "rgba.PNG")
        base.convert("P").save(folder / "p.gif")
        base.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
        deep = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(deep).save(folder / "i16.png")
        base.save(folder / "upper.JPG", format="JPEG")
    return root


# ----------------------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    id: str
    recipe: str
    make: Callable[[Path], list[str]]  # builds the data under the folder given; returns the data flags
    labels: list[str] | None = None  # trains with these classes
    train_samples: int | None = None
    error: tuple[str, ...] = ()  # else: refused with one line holding these


def _different_depths(tmp: Path) -> list[str]:
    train = _class_images(tmp / "data" / "small_train", 4)
    validation = _class_images(tmp / "other" / "dataset" / "deep" / "validation", 2)
    return ["--train_dir", str(train), "--validation_dir", str(validation)]


def _nested(tmp: Path) -> list[str]:
    train = _class_images(tmp / "train", 2, nest="2019/jan")
    _class_images(tmp / "train", 2, nest="2020")  # same names, another sub-folder: 4 per class in all
    validation = _class_images(tmp / "validation", 1)
    return ["--train_dir", str(train), "--validation_dir", str(validation)]


def _relative_table(tmp: Path) -> list[str]:
    train = _image_table(tmp / "images" / "train.csv", tmp / "images" / "imgs" / "train", tmp / "images")
    validation = _image_table(
        tmp / "images" / "val" / "validation.csv", tmp / "images" / "val" / "v", tmp / "images" / "val", 1
    )
    return ["--train_file", str(train), "--validation_file", str(validation)]


def _metadata_folders(tmp: Path) -> list[str]:
    dirs = []
    for split, n in (("train", 4), ("validation", 1)):
        folder = tmp / "meta" / split
        _image_table(folder / "metadata.csv", folder / "pictures", folder, n)
        text = (folder / "metadata.csv").read_text().replace("image,label", "file_name,label", 1)
        (folder / "metadata.csv").write_text(text)
        dirs += [f"--{split}_dir", str(folder)]
    return dirs


def _upper_case_extensions(tmp: Path) -> list[str]:
    train = _class_images(tmp / "train", 4, suffix=".JPG")
    validation = _class_images(tmp / "validation", 1, suffix=".Png")
    return ["--train_dir", str(train), "--validation_dir", str(validation)]


def _every_mode(tmp: Path) -> list[str]:
    return ["--train_dir", str(_modes_folder(tmp / "train")), "--validation_dir", str(_class_images(tmp / "val", 1))]


def _exif_folder(tmp: Path) -> list[str]:
    for name in CLASSES:
        (tmp / "train" / name).mkdir(parents=True)
        for i in range(2):
            stored, _ = _exif_rotated(orientation=6 + i * 2)
            stored.save(tmp / "train" / name / f"{i}.jpg", exif=_orientation_exif(6 + i * 2), quality=95)
    return ["--train_dir", str(tmp / "train"), "--validation_dir", str(_class_images(tmp / "val", 1))]


def _flat(tmp: Path) -> list[str]:
    folder = tmp / "flat"
    folder.mkdir()
    for i, rgb in enumerate(COLORS.values()):
        _square(rgb).save(folder / f"{i}.png")
    return ["--train_dir", str(folder)]


def _loose_images(tmp: Path) -> list[str]:
    train = _class_images(tmp / "train", 2)
    _square((0, 0, 0)).save(train / "stray.png")
    return ["--train_dir", str(train)]


def _missing_image(tmp: Path) -> list[str]:
    train = _image_table(tmp / "images" / "train.csv", tmp / "images" / "imgs", tmp / "images")
    with train.open("a") as f:
        f.write("imgs/nowhere.png,red\n")
    return ["--train_file", str(train)]


def _url_image(tmp: Path) -> list[str]:
    train = _image_table(tmp / "images" / "train.csv", tmp / "images" / "imgs", tmp / "images")
    with train.open("a") as f:
        f.write("https://example.com/cat.png,red\n")
    return ["--train_file", str(train)]


def _text(tmp: Path, train: Path, validation: Path | None = None, *extra: str) -> list[str]:
    flags = ["--train_file", str(train)]
    return flags + (["--validation_file", str(validation)] if validation else []) + list(extra)


LAYOUTS = [
    Layout("image-folders-at-different-depths", "image_classification", _different_depths, CLASSES, 12),
    Layout("image-nested-class-folders", "image_classification", _nested, CLASSES, 12),
    Layout("image-table-relative-to-itself", "image_classification", _relative_table, CLASSES, 12),
    Layout("image-metadata-csv-folders", "image_classification", _metadata_folders, CLASSES, 12),
    Layout("image-upper-case-extensions", "image_classification", _upper_case_extensions, CLASSES, 12),
    Layout("image-every-pil-mode", "image_classification", _every_mode, CLASSES, 21),
    Layout("image-exif-rotated-jpegs", "image_classification", _exif_folder, CLASSES, 6),
    Layout(
        "image-flat-folder",
        "image_classification",
        _flat,
        error=("--train_dir", "holds images but no class folders", "<dir>/<class>/<image>"),
    ),
    Layout(
        "image-loose-images-beside-classes",
        "image_classification",
        _loose_images,
        error=("1 image(s) outside any class folder", "stray.png"),
    ),
    Layout(
        "image-table-missing-file",
        "image_classification",
        _missing_image,
        error=("imgs/nowhere.png", "data row 13 of the train split", "tried", "images/imgs/nowhere.png"),
    ),
    Layout("image-table-url", "image_classification", _url_image, error=("by URL", "https://example.com/cat.png")),
    Layout(
        "text-utf8-bom",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", _text_rows(), encoding="utf-8-sig")),
        ["neg", "pos"],
    ),
    Layout(
        "text-utf16",
        "text_classification",
        lambda t: _text(
            t, _csv(t / "t.csv", _text_rows(), encoding="utf-16"), _csv(t / "v.csv", _text_rows(4), encoding="utf-16")
        ),
        ["neg", "pos"],
        12,
    ),
    Layout(
        "text-cp1252-without-encoding",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", [("café crème", "pos"), *_text_rows()], encoding="cp1252")),
        error=("--train_file", "is not UTF-8 text", "--encoding"),
    ),
    Layout(
        "text-cp1252-with-encoding",
        "text_classification",
        lambda t: _text(
            t,
            _csv(t / "t.csv", [("café crème", "pos"), *_text_rows()], encoding="cp1252"),
            None,
            "--encoding",
            "cp1252",
        ),
        ["neg", "pos"],
    ),
    Layout(
        "text-padded-header",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", _text_rows(), header=(" text ", "label  "))),
        ["neg", "pos"],
    ),
    Layout(
        "text-label-column-near-miss",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", _text_rows(), header=("text", "Label"))),
        error=("'label' is not in the train split", "nearest: 'Label'", "--label_column_name"),
    ),
    Layout(
        "text-empty-cells",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", [*_text_rows(4), ("", "pos"), *_text_rows(3), ("  ", "neg")])),
        error=("2 data row(s) of the train split have no text in column 'text'", "rows 5, 9"),
    ),
    Layout(
        "text-missing-label",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", [*_text_rows(4), ("the movie was fine", ""), *_text_rows(4)])),
        error=("1 data row(s) of the train split have no 'label' value", "rows 5"),
    ),
    Layout(
        "text-labels-int-and-string",
        "text_classification",
        lambda t: _text(
            t,
            _jsonl(t / "t.jsonl", [{"text": x, "label": [0, 1][i % 2]} for i, (x, _) in enumerate(_text_rows())]),
            _jsonl(t / "v.jsonl", [{"text": x, "label": ["0", "1"][i % 2]} for i, (x, _) in enumerate(_text_rows(4))]),
        ),
        ["0", "1"],
        12,
    ),
    Layout(
        "text-whole-float-labels",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", [(x, f"{i % 3}.0") for i, (x, _) in enumerate(_text_rows())])),
        ["0", "1", "2"],
    ),
    Layout(  # fractional numbers are scores: a regression on the one target, the label column
        "text-fractional-labels-are-a-regression",
        "text_classification",
        lambda t: _text(t, _csv(t / "t.csv", [(x, f"{i % 3}.5") for i, (x, _) in enumerate(_text_rows())])),
        ["label"],
    ),
    Layout(
        "text-fractional-labels-as-classes",
        "text_classification",
        lambda t: [
            *_text(t, _csv(t / "t.csv", [(x, f"{i % 3}.5") for i, (x, _) in enumerate(_text_rows())])),
            "--problem_type",
            "single_label_classification",
        ],
        error=("holds fractional numbers", "0.5", "--problem_type regression"),
    ),
]


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    """The data lives under ``tmp/data_root``; the recipe runs from ``tmp/elsewhere``."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "data_root"


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.id)
def test_layout_trains_or_is_refused_with_its_line(layout: Layout, elsewhere: Path, tiny_bert, capfd):
    elsewhere.mkdir()
    data = layout.make(elsewhere)
    model = IMAGE_MODEL if layout.recipe == "image_classification" else ["--model_name_or_path", str(tiny_bert)]
    out = elsewhere.parent / "out"
    argv = [*model, *data, *trainer_flags(out, "--max_steps", "1", "--disable_tqdm", "true")]
    main = RECIPES[layout.recipe].main
    if layout.error:
        capfd.readouterr()
        with pytest.raises(SystemExit) as exited:
            run_cli(main, argv)
        assert exited.value.code == 2
        lines = [line for line in capfd.readouterr().err.splitlines() if line.strip().startswith("error:")]
        assert len(lines) == 1, lines
        for part in layout.error:
            assert part in lines[0], f"{part!r} not in {lines[0]!r}"
        assert not out.exists()
        return
    results = main(argv)
    assert yaml.safe_load((out / "warmstart_config.yaml").read_text())["labels"] == layout.labels
    if layout.train_samples is not None:
        assert results["train_samples"] == layout.train_samples


def test_a_table_of_relative_paths_predicts_from_another_folder(elsewhere: Path):
    """Prediction reads a table's relative image paths as training does (the model: one step on the same table)."""
    elsewhere.mkdir()
    data = _relative_table(elsewhere)
    out = elsewhere.parent / "out"
    RECIPES["image_classification"].main([*IMAGE_MODEL, *data, *trainer_flags(out, "--max_steps", "1")])
    table = data[data.index("--validation_file") + 1]
    argv = ["--model_name_or_path", str(out), "--input", table, "--output", str(elsewhere.parent / "p.csv")]
    results = RECIPES["predict"].main([*argv, "--disable_tqdm", "true"])
    assert results["rows"] == 3 and "accuracy" in results
    # an image folder with nested class folders: the first-level folder is each image's true label, as in training
    nested = _class_images(elsewhere / "nested", 1, nest="2021/march")
    argv = ["--model_name_or_path", str(out), "--input", str(nested), "--output", str(elsewhere.parent / "n.csv")]
    results = RECIPES["predict"].main([*argv, "--disable_tqdm", "true"])
    assert results["rows"] == 3 and "accuracy" in results


def test_pretraining_reads_a_table_of_relative_paths(elsewhere: Path):
    elsewhere.mkdir()
    train = _image_table(elsewhere / "images" / "train.csv", elsewhere / "images" / "imgs", elsewhere / "images")
    out = elsewhere.parent / "ae"
    argv = [
        *IMAGE_MODEL,
        "--train_file",
        str(train),
        *trainer_flags(out, "--max_steps", "1", "--disable_tqdm", "true"),
    ]
    RECIPES["pretrain_autoencoder"].main(argv)
    assert (out / "config.json").is_file()


def test_pretraining_reads_a_utf16_corpus(elsewhere: Path, tiny_bert):
    elsewhere.mkdir()
    corpus = elsewhere / "corpus.csv"
    _csv(corpus, [(f"the movie was really good {i}",) for i in range(30)], header=("text",), encoding="utf-16")
    out = elsewhere.parent / "mlm"
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(corpus), "--max_seq_length", "24"]
    RECIPES["pretrain_mlm"].main([*argv, *trainer_flags(out, "--max_steps", "1", "--disable_tqdm", "true")])
    assert (out / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------------- decoding


def _upright() -> Image.Image:
    """A portrait picture no rotation or flip maps onto itself: red top-left, green top-right, blue bottom."""
    image = Image.new("RGB", (32, 48), (30, 40, 220))
    image.paste((220, 30, 30), (0, 0, 16, 24))
    image.paste((30, 200, 40), (16, 0, 32, 24))
    return image


_STORE = {  # orientation tag -> how a camera stores the upright picture (the inverse of what the tag says to do)
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),  # viewers turn it 90 degrees clockwise
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}


def _orientation_exif(tag: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = tag
    return exif.tobytes()


def _exif_rotated(orientation: int = 6) -> tuple[Image.Image, Image.Image]:
    upright = _upright()
    return _STORE[orientation](upright), upright


def _close(actual: Image.Image | np.ndarray, expected: Image.Image, tolerance: float = 6.0) -> bool:
    a = np.asarray(actual, dtype=np.float32)
    b = np.asarray(expected, dtype=np.float32)
    return a.shape == b.shape and float(np.abs(a - b).mean()) < tolerance


def _read_folders(train: Path, validation: Path):
    """The splits and labels the image recipe reads from two folders (its own data arguments, its own loader)."""
    args = DataArguments(train_dir=str(train), validation_dir=str(validation))
    return load_labeled_splits(args, seed=0, modality="image")


@pytest.mark.parametrize("orientation", sorted(_STORE))
def test_an_exif_rotated_jpeg_decodes_upright_in_training_the_cache_and_prediction(orientation: int, tmp_path):
    stored, upright = _exif_rotated(orientation)
    folder = tmp_path / "photos"
    for split in ("train", "validation"):
        (folder / split / "portrait").mkdir(parents=True)
        stored.save(folder / split / "portrait" / "0.jpg", exif=_orientation_exif(orientation), quality=98)
    assert not _close(stored.resize(upright.size), upright), "the stored pixels must differ from the upright picture"

    pixels = lambda image: torch.from_numpy(np.asarray(image).copy())  # noqa: E731 - no resize, no normalisation
    splits, _ = _read_folders(folder / "train", folder / "validation")
    transformed = attach_image_transforms(splits, "image", pixels, pixels)  # training and evaluation
    assert _close(transformed["train"][0]["pixel_values"].numpy(), upright)
    assert _close(transformed["validation"][0]["pixel_values"].numpy(), upright)
    # the feature cache computes its features from splits made by the same function with the evaluation transform
    # (recipes/image_classification.py: feature_cache.source_splits); prediction decodes through its own rows:
    predictor = SimpleNamespace(modality="image", labels=["portrait"], problem_type="single_label_classification")
    rows = ImageRows(read_prediction_input(folder / "validation", predictor), pixels)
    _, predicted, error = rows[0]
    assert error is None and _close(predicted.numpy(), upright)


def _encoded(image: Image.Image, format: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save)
    return buffer.getvalue()


def _rgba_half_transparent() -> Image.Image:
    image = Image.new("RGBA", (4, 2), (200, 0, 0, 255))
    image.paste((0, 0, 0, 0), (2, 0, 4, 2))  # transparent black: shows the background
    return image


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (4, 2), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.paste(0, (2, 0, 4, 2))
    image.info["transparency"] = 0
    return image


def _two_frame_gif() -> bytes:
    frames = [Image.new("RGB", (4, 2), (200, 0, 0)), Image.new("RGB", (4, 2), (0, 0, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _two_page_tiff() -> bytes:
    pages = [Image.new("RGB", (4, 2), (0, 180, 0)), Image.new("RGB", (4, 2), (0, 0, 200))]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def _left_right(left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (4, 2), left)
    image.paste(right, (2, 0, 4, 2))
    return image


WHITE = BACKGROUND
MODES = [
    ("L", _encoded(Image.new("L", (4, 2), 100), "PNG"), _left_right((100,) * 3, (100,) * 3)),
    ("1", _encoded(Image.new("1", (4, 2), 1), "PNG"), _left_right((255,) * 3, (255,) * 3)),
    ("LA", _encoded(_rgba_half_transparent().convert("LA"), "PNG"), _left_right((60,) * 3, WHITE)),
    ("RGBA", _encoded(_rgba_half_transparent(), "PNG"), _left_right((200, 0, 0), WHITE)),
    ("P+transparency", _encoded(_palette_with_transparency(), "PNG"), _left_right((10, 200, 30), WHITE)),
    (
        "CMYK",
        _encoded(Image.new("CMYK", (4, 2), (0, 255, 255, 0)), "JPEG", quality=100),
        _left_right((255, 0, 0), (255, 0, 0)),
    ),
    (
        "I;16",
        _encoded(Image.fromarray(np.full((2, 4), 32896, dtype=np.uint16)), "PNG"),
        _left_right((128,) * 3, (128,) * 3),
    ),
    (
        "I",
        _encoded(Image.fromarray(np.full((2, 4), 40000, dtype=np.int32)), "TIFF"),
        _left_right((156,) * 3, (156,) * 3),
    ),
    (
        "F",
        _encoded(Image.fromarray(np.full((2, 4), 0.5, dtype=np.float32)), "TIFF"),
        _left_right((128,) * 3, (128,) * 3),
    ),
    ("animated GIF", _two_frame_gif(), _left_right((200, 0, 0), (200, 0, 0))),
    ("multi-page TIFF", _two_page_tiff(), _left_right((0, 180, 0), (0, 180, 0))),
]


@pytest.mark.parametrize(("mode", "encoded", "expected"), MODES, ids=[m[0] for m in MODES])
def test_every_pil_mode_decodes_to_the_pixels_a_viewer_shows(mode: str, encoded: bytes, expected: Image.Image):
    decoded = load_image({"bytes": encoded, "path": None})
    assert decoded.mode == "RGB"
    assert _close(decoded, expected, tolerance=3.0), (mode, np.asarray(decoded)[0].tolist())


def test_sixteen_bit_images_are_scaled_not_clipped():
    """Pillow's own conversion clips every 16-bit value above 255 to white: a dark-to-bright ramp would be white."""
    ramp = np.linspace(0, 65535, 16).astype(np.uint16).reshape(2, 8)
    decoded = np.asarray(to_channels(Image.fromarray(ramp), 3))[..., 0]
    assert decoded.min() == 0 and decoded.max() == 255
    assert len(np.unique(decoded)) == 16
    assert np.asarray(Image.fromarray(ramp).convert("L")).max() == 255  # the clipping this avoids
    assert (np.asarray(Image.fromarray(ramp).convert("L")) == 255).sum() >= 15


def test_one_channel_models_get_grey_images():
    decoded = to_channels(_rgba_half_transparent(), channels=1)
    assert decoded.mode == "L" and decoded.getpixel((3, 0)) == 255


def test_a_utf16_table_without_a_byte_order_mark_is_refused_with_the_encoding_flag(tmp_path):
    from warmstart.data.sources import read_table

    path = tmp_path / "t.csv"
    path.write_bytes("text,label\nhi,pos\n".encode("utf-16-le"))  # no BOM: reads as UTF-8 with NUL bytes
    try:
        data = read_table(path, "--train_file")
    except WarmstartError as err:
        assert "--train_file" in str(err)
    else:  # read as UTF-8, NULs and all: the column names show it, and --encoding utf-16-le reads it right
        assert data.column_names != ["text", "label"]
    assert read_table(path, "--train_file", encoding="utf-16-le").column_names == ["text", "label"]


def test_an_unknown_encoding_is_one_line(tmp_path):
    from warmstart.data.sources import read_table

    path = _csv(tmp_path / "t.csv", _text_rows())
    with pytest.raises(WarmstartError, match="--encoding 'nope' is not an encoding"):
        read_table(path, "--train_file", encoding="nope")


def test_bom_detection_names_utf16_and_utf32(tmp_path):
    from warmstart.data.sources import sniff_encoding

    for encoding, expected in (("utf-16", "utf-16"), ("utf-32", "utf-32"), ("utf-8-sig", None), ("utf-8", None)):
        path = tmp_path / f"{encoding}.csv"
        path.write_bytes("text\n".encode(encoding))
        assert sniff_encoding(path) == expected, encoding
    assert (
        codecs.BOM_UTF16_LE in (tmp_path / "utf-16.csv").read_bytes()[:2]
        or codecs.BOM_UTF16_BE in (tmp_path / "utf-16.csv").read_bytes()[:2]
    )


def test_write_image_folder_layout_still_reads(tmp_path):
    """The layout every other test uses (``<split>/<class>/<i>.png``) reads into the same classes and counts."""
    root = write_image_folder(tmp_path / "train", 2, 0)
    shutil.copytree(root, tmp_path / "validation")
    splits, labels = _read_folders(root, tmp_path / "validation")
    assert labels.names == CLASSES and len(splits["train"]) == 6 and len(splits["validation"]) == 6
