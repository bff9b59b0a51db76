#!/usr/bin/env python
"""Step time of ``top_k`` (the top 2 of MiniLM-L6's 6 blocks and the head train) relative to ``full``.

With ``top_k`` warmstart runs no backward pass through the frozen bottom blocks (and keeps them in eval mode), so a
step should cost the forward of the whole encoder plus the backward of the top two blocks: about half of a full step.
Each side is ``strategy_step_time.time_strategy`` (warmstart's ``prepare_fine_tuning`` and the HF Trainer, batch 32
of the benchmarks' realistic length mix, dynamically padded, the same batches on both sides) in a child process of
its own, so that its peak RSS is its own; its figure is the median of ``--steps`` optimizer steps after ``--warmup``
untimed ones. The ratios are printed last.

    python benchmarks/top_k_step.py [--pairs 3] [--steps 8 --warmup 2]
    python benchmarks/top_k_step.py --quick
"""

from __future__ import annotations

from _common import (
    function_side,
    print_header,
    print_ratios,
    print_table,
    ratio_line,
    run_pairs,
    spread,
)
from strategy_step_time import parse_step_arguments

FULL = "full"
TOP_K = "top_k (k=2)"


def main() -> None:
    cli = parse_step_arguments(__doc__.splitlines()[0])
    sides = [
        function_side(name, "strategy_step_time:timed_steps", strategy=name, steps=cli.steps, warmup=cli.warmup)
        for name in (FULL, TOP_K)
    ]
    pairs = list(run_pairs(sides, cli.pairs))

    print_header(
        "top_k_step: step time of top_k (k=2 of 6) relative to full (MiniLM-L6, batch 32)",
        [f"timed: median of {cli.steps} optimizer steps after {cli.warmup} untimed, the same batches on both sides"],
        cli.quick,
    )
    rows = []
    for side in sides:
        runs = [pair[side.name] for pair in pairs]
        trainable, total = runs[0]["trainable_params"], runs[0]["total_params"]
        rows.append(
            [
                side.name,
                f"{trainable:,} ({100 * trainable / total:.1f} %)",
                spread([r["step_s"] for r in runs], "{:.3f}"),
                spread([r.peak_rss_mib for r in runs], "{:,.0f}"),
            ]
        )
    print_table(["side", "trainable params", "s/step", "peak RSS MiB"], rows)
    ratios = [pair[TOP_K]["step_s"] / pair[FULL]["step_s"] for pair in pairs]
    line = ratio_line("step time, top_k (k=2) / full", ratios, target=0.55, at_most=True)
    print_ratios([line], len(pairs), cli.quick)


if __name__ == "__main__":
    main()
