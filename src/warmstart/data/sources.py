"""Reading data as users lay it out: tables (csv / tsv / json / jsonl / parquet, plain text for corpora) in the
encodings spreadsheets export, image folders at any depth or place, and image paths relative to the table that names
them. Every recipe that reads data (classification, pretraining, comparison, prediction) reads it here.

The rules (the README's data section states them for users):

- **Tables.** UTF-8, with or without a byte-order mark, and UTF-16 / UTF-32 with one, are read as they are; anything
  else needs ``--encoding`` (e.g. ``cp1252``, ``latin-1``), and a file that is not what it is read as is refused with
  a line that says so. Column names are trimmed of surrounding whitespace (``" text "`` is ``text``).
- **Image folders.** Each split's directory holds one sub-folder per class; an image's class is the name of the
  folder directly below its split's directory, whatever lies deeper (``train/cat/2019/a.jpg`` is a ``cat``), and
  whatever the depth or place of each split's directory. Extensions match in any case (``.JPG``); hidden files and
  folders (``.x``, ``__MACOSX``) are skipped. A ``metadata.csv`` / ``metadata.jsonl`` / ``metadata.parquet`` at the top
  of a split's directory (the ``datasets`` convention: a ``file_name`` column of paths relative to it, and the labels)
  is read instead of the folder names.
- **Image paths in tables.** A relative path is read relative to the folder of the file that names it, then (as
  before) relative to the working directory; a path that is neither is refused with the paths tried. URLs are
  refused: images named in a table are read from disk, never fetched.
"""

from __future__ import annotations

import codecs
import itertools
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet
from datasets import ClassLabel, DatasetDict, Value
from datasets.exceptions import DatasetsError
from PIL import Image

from warmstart.errors import WarmstartError

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# plain text, one example per line, is a corpus for pretraining (classification needs a label column)
CORPUS_BUILDERS = {**FILE_BUILDERS, ".txt": "text"}
# What datasets raises for a file it cannot parse (the builders wrap pandas / pyarrow / json errors, or not).
LOAD_ERRORS = (DatasetsError, ValueError, TypeError, OSError, StopIteration, pyarrow.ArrowException)
IMAGE_COLUMN = "image"  # an image folder's columns, as datasets' imagefolder names them
FOLDER_LABEL_COLUMN = "label"
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
_URL_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://", "hf://", "az://", "abfs://")


# ------------------------------------------------------------------------------------------------------------ tables


def read_tables(
    files: Mapping[str, str], builders_by_suffix: Mapping[str, str] = FILE_BUILDERS, encoding: str | None = None
) -> DatasetDict:
    """Reads one table per split (``{split: file}``), all in one format, each with its own columns.

    Raises:
        WarmstartError: a missing file, a folder, an unknown or mixed format, an unreadable or empty file.
    """
    suffixes = {Path(f).suffix.lower() for f in files.values()}
    unknown = suffixes - set(builders_by_suffix)
    for split, file in files.items():
        _check_file(file, f"--{split}_file", split)
    if unknown:
        known = ", ".join(builders_by_suffix)
        raise WarmstartError(f"cannot read {', '.join(sorted(unknown))} files: use {known}")
    if len({builders_by_suffix[s] for s in suffixes}) > 1:
        raise WarmstartError(
            f"the data files mix formats ({', '.join(sorted(suffixes))}): give them all in one format"
        )
    # one split at a time: each file keeps its own columns, so that one missing a column is named by the column
    # checks instead of failing inside datasets with a schema cast error
    return DatasetDict(
        {
            split: read_table(file, f"--{split}_file", builders_by_suffix, encoding, f"the {split} split is empty")
            for split, file in files.items()
        }
    )


def _check_file(file: str, flag: str, split: str) -> None:
    if Path(file).is_dir():
        raise WarmstartError(f"{flag} {file} is a directory: give a data file (--{split}_dir for images)")
    if not Path(file).is_file():
        raise WarmstartError(f"{flag} {file} does not exist")


def read_table(
    file: str | Path,
    flag: str,
    builders_by_suffix: Mapping[str, str] = FILE_BUILDERS,
    encoding: str | None = None,
    empty: str = "there is nothing to read",
) -> datasets.Dataset:
    """Reads one table (see the module docstring for encodings and column names).

    Args:
        file: the table.
        flag: how the user named it (``--train_file``), for messages.
        builders_by_suffix: the formats accepted.
        encoding: the text encoding (``None``: UTF-8, or what a byte-order mark says).
        empty: what a table without rows is, after ``{flag} {file} has no rows: ``.

    Raises:
        WarmstartError: an unknown format, an undecodable or unparsable file, no rows.
    """
    path = Path(file)
    check_encoding(encoding)
    suffix = path.suffix.lower()
    if suffix not in builders_by_suffix:
        raise WarmstartError(f"cannot read {suffix or 'extension-less'} files: use {', '.join(builders_by_suffix)}")
    builder = builders_by_suffix[suffix]
    kwargs: dict[str, str] = {"delimiter": "\t"} if suffix == ".tsv" else {}
    if builder != "parquet":
        chosen = encoding or sniff_encoding(path)
        if chosen:
            kwargs["encoding"] = chosen
    try:
        with datasets_errors_not_logged():
            data = datasets.load_dataset(builder, data_files={"input": str(path)}, split="input", **kwargs)
    except LOAD_ERRORS as err:
        decode = _decode_error(err)
        if decode is not None:
            read_as = kwargs.get("encoding", "UTF-8")
            raise WarmstartError(
                f"{flag} {file} is not {read_as} text ({decode}): give its encoding with --encoding (e.g. cp1252 "
                "or latin-1 for older spreadsheet exports), or save it as UTF-8"
            ) from None
        if _has_no_rows(path, builder, kwargs.get("encoding")):
            raise WarmstartError(f"{flag} {file} has no rows: {empty}") from None
        raise WarmstartError(f"cannot read {flag} {file} as {builder}: {root_cause(err)}") from None
    return trim_column_names(data)


def check_encoding(encoding: str | None) -> None:
    """Refuses an ``--encoding`` Python does not know (before anything is read)."""
    if encoding is None:
        return
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise WarmstartError(
            f"--encoding {encoding!r} is not an encoding Python knows: e.g. utf-8, utf-16, cp1252, latin-1"
        ) from None


def sniff_encoding(path: Path) -> str | None:
    """The encoding a byte-order mark names (UTF-16 / UTF-32), else ``None`` (UTF-8, whose mark the readers skip)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


def _decode_error(err: BaseException) -> str | None:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        if isinstance(err, UnicodeError):
            return str(err).split(":", 1)[-1].strip()[:200]
        seen.append(err)
        err = err.__cause__ or err.__context__
    return None


def trim_column_names(data: datasets.Dataset) -> datasets.Dataset:
    """Renames columns whose names carry surrounding whitespace (or a stray byte-order mark) to the trimmed name,
    unless that name is taken."""
    names = data.column_names
    renames = {}
    for name in names:
        trimmed = name.strip().lstrip("\ufeff").strip()
        if trimmed and trimmed != name and trimmed not in names and trimmed not in renames.values():
            renames[name] = trimmed
    return data.rename_columns(renames) if renames else data


def root_cause(err: BaseException) -> str:
    """The first line of the most specific cause: datasets wraps the parser's error in a generic one."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    specific = [e for e in chain if not isinstance(e, DatasetsError) and str(e).strip()] or chain
    text = str(specific[0]).strip()
    return text.splitlines()[0][:300] if text else type(specific[0]).__name__


def _has_no_rows(file: Path, builder: str, encoding: str | None = None) -> bool:
    """Whether a data file holds no rows (nothing, or a CSV header only), read cheaply."""
    try:
        if builder == "parquet":
            return pyarrow.parquet.ParquetFile(file).metadata.num_rows == 0
        with file.open(encoding=encoding or "utf-8", errors="replace") as f:
            lines = [line.strip() for line in itertools.islice((x for x in f if x.strip()), 2)]
    except (OSError, LookupError, pyarrow.ArrowException):
        return False
    if builder == "csv":
        return len(lines) <= 1
    return not lines or (len(lines) == 1 and lines[0] in ("[]", "{}"))


@contextmanager
def datasets_errors_not_logged() -> Iterator[None]:
    """datasets logs a file it cannot parse to stderr before raising; the raise is reported here, on one line."""

    def below_error(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR

    handlers = list(logging.getLogger("datasets").handlers)
    for handler in handlers:
        handler.addFilter(below_error)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(below_error)


# ----------------------------------------------------------------------------------------------------- image folders


def image_extensions() -> set[str]:
    """Every extension Pillow reads, lower case (files match in any case)."""
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def is_hidden(file: Path, folder: Path) -> bool:
    """Whether a file is hidden below ``folder`` (``.x``, macOS ``._x.jpg`` copies, ``__MACOSX/``)."""
    return any(part.startswith((".", "__")) for part in file.relative_to(folder).parts)


def image_files(folder: Path) -> list[Path]:
    """The image files below ``folder``, at any depth, hidden ones left out, sorted by their path below it."""
    extensions = image_extensions()
    files = (f for f in folder.rglob("*") if f.suffix.lower() in extensions and f.is_file())
    return sorted((f for f in files if not is_hidden(f, folder)), key=lambda f: f.relative_to(folder).as_posix())


def read_image_folders(dirs: Mapping[str, str], *, labeled: bool = True) -> DatasetDict:
    """Reads one image folder per split (``{split: dir}``) into an ``image`` column (absolute paths) and, when
    ``labeled``, a ``label`` column (``ClassLabel`` over the class folders of all splits, sorted), by the rules of the
    module docstring. Unlabeled folders (pretraining) may hold images at any depth, class folders or none.

    Raises:
        WarmstartError: a missing folder, a folder without images, or (``labeled``) images outside class folders.
    """
    for split, folder in dirs.items():
        if not Path(folder).is_dir():
            raise WarmstartError(f"--{split}_dir {folder} is not a directory")
    metadata = {split: _metadata_file(Path(folder)) for split, folder in dirs.items()}
    if any(metadata.values()):
        return _read_image_metadata(dirs, metadata)
    found = {split: image_files(Path(folder)) for split, folder in dirs.items()}
    for split, files in found.items():
        if not files:
            raise WarmstartError(
                f"--{split}_dir {dirs[split]} holds no image files: put them in one sub-folder per class "
                "(<dir>/<class>/<image>)"
            )
    if not labeled:
        return DatasetDict({split: _image_table([str(f.resolve()) for f in files]) for split, files in found.items()})
    classes: dict[str, list[str]] = {}
    for split, files in found.items():
        folder = Path(dirs[split])
        loose = [f for f in files if f.parent == folder]
        if len(loose) == len(files):
            raise WarmstartError(
                f"--{split}_dir {folder} holds images but no class folders: put each class's images in a sub-folder "
                "named after the class (<dir>/<class>/<image>)"
            )
        if loose:
            raise WarmstartError(
                f"--{split}_dir {folder} has {len(loose)} image(s) outside any class folder (e.g. {loose[0].name}): "
                "move them into their class's sub-folder, or out of the folder"
            )
        classes[split] = [f.relative_to(folder).parts[0] for f in files]
    names = sorted({name for split_classes in classes.values() for name in split_classes})
    features = datasets.Features({IMAGE_COLUMN: datasets.Image(), FOLDER_LABEL_COLUMN: ClassLabel(names=names)})
    splits = DatasetDict()
    for split, files in found.items():
        table = {IMAGE_COLUMN: [str(f.resolve()) for f in files], FOLDER_LABEL_COLUMN: classes[split]}
        splits[split] = datasets.Dataset.from_dict(table, features=features)
    return splits


def _image_table(paths: list[str]) -> datasets.Dataset:
    features = datasets.Features({IMAGE_COLUMN: datasets.Image()})
    return datasets.Dataset.from_dict({IMAGE_COLUMN: paths}, features=features)


def _metadata_file(folder: Path) -> Path | None:
    return next((folder / name for name in METADATA_FILES if (folder / name).is_file()), None)


def _read_image_metadata(dirs: Mapping[str, str], metadata: Mapping[str, Path | None]) -> DatasetDict:
    missing = [split for split, file in metadata.items() if file is None]
    if missing:
        raise WarmstartError(
            f"--{missing[0]}_dir {dirs[missing[0]]} has no metadata file while another split's folder has one: give "
            f"every split a {' / '.join(METADATA_FILES)}, or none"
        )
    splits = DatasetDict()
    for split, file in metadata.items():
        assert file is not None
        data = read_table(file, "the metadata file", empty=f"the {split} split is empty")
        if "file_name" not in data.column_names:
            raise WarmstartError(
                f"{file} has no file_name column (columns: {', '.join(data.column_names)}): name each image's path, "
                "relative to the folder, in a file_name column"
            )
        if IMAGE_COLUMN in data.column_names:
            data = data.remove_columns(IMAGE_COLUMN)
        data = data.rename_column("file_name", IMAGE_COLUMN)
        splits[split] = resolve_image_paths(data, IMAGE_COLUMN, file.parent, f"{file}")
    return splits


# ----------------------------------------------------------------------------------------------- image paths in tables


def resolve_image_paths(data: datasets.Dataset, column: str, base_dir: Path | None, where: str) -> datasets.Dataset:
    """Turns a column of image paths into an ``Image`` column of absolute paths: a relative path is read relative to
    ``base_dir`` (the folder of the table that names it) first, then to the working directory.

    Raises:
        WarmstartError: a URL, or a path that is no file (the paths tried are named).
    """
    resolved: list[str | None] = []
    missing: list[tuple[int, str, list[Path]]] = []
    for row, value in enumerate(data[column]):
        if value is None or not str(value).strip():
            resolved.append(None)  # named by the image checks: "row N of the split has no image"
            continue
        text = str(value).strip()
        if text.lower().startswith(_URL_SCHEMES):
            raise WarmstartError(
                f"data row {row + 1} of {where} names its image by URL ({text[:80]}): images named in a table "
                "are read from local files only: download the images and give their paths"
            )
        tried = _candidates(Path(text).expanduser(), base_dir)
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            missing.append((row, text, tried))
            resolved.append(None)
        else:
            resolved.append(str(found.resolve()))
    if missing:
        row, text, tried = missing[0]
        more = f" ({len(missing) - 1} more image path(s) there are missing too)" if len(missing) > 1 else ""
        raise WarmstartError(
            f"image {text} in data row {row + 1} of {where} is not a file (tried "
            f"{', '.join(str(p) for p in tried)}){more}: fix the path, relative to the table's folder"
        )
    return data.remove_columns(column).add_column(column, resolved).cast_column(column, datasets.Image())


def _candidates(path: Path, base_dir: Path | None) -> list[Path]:
    if path.is_absolute():
        return [path]
    tried = [base_dir / path] if base_dir is not None else []
    cwd = Path.cwd() / path
    return tried + ([cwd] if base_dir is None or cwd.resolve() != (base_dir / path).resolve() else [])


def is_path_column(feature: object) -> bool:
    """Whether a feature is a column of strings (image paths, in an image column)."""
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")
