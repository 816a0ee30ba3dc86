#!/usr/bin/env python3
"""Plots a `nanovllm train` run: training loss per step and eval perplexity per evaluation.

    pip install matplotlib
    python3 scripts/plot_training.py RUN_DIR/metrics.jsonl OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(metrics_path, out_path):
    train, evals = [], []
    with open(metrics_path) as f:
        for line in f:
            m = json.loads(line)
            if "eval_ppl" in m:
                evals.append((m["step"], m["eval_ppl"]))
            elif "loss" in m:
                train.append((m["step"], m["loss"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([s for s, _ in train], [l for _, l in train], lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("training loss (nats/token)")
    a.set_title("training loss")
    a.grid(alpha=0.3)
    b.plot([s for s, _ in evals], [p for _, p in evals], marker="o")
    b.set_xlabel("step")
    b.set_ylabel("eval perplexity")
    b.set_yscale("log")
    b.set_title("held-out perplexity")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
