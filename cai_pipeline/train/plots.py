"""PNG plots of a run's metrics.jsonl: one figure per group of related curves, training and eval together."""

from __future__ import annotations

import json
from pathlib import Path

from cai_pipeline.store import atomic_write

GROUPS = {
    "loss": ["loss"],
    "rewards": ["rewards/chosen", "rewards/rejected", "rewards/margins"],
    "accuracy": ["rewards/accuracies"],
    "logps": ["logps/chosen", "logps/rejected"],
    "lengths": ["length/chosen", "length/rejected"],
    "lr": ["lr"],
    "throughput": ["tokens/s"],
}


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out_dir: Path) -> list[Path]:
    """Write <out_dir>/<group>.png for each group with data; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; and never steal focus from a user's session
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys in GROUPS.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for key in keys:
            for label, prefix, style in (("train", "", "-"), ("eval", "eval/", "o--")):
                points = [(r["step"], r[prefix + key]) for r in rows if prefix + key in r]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, style, label=f"{label} {key}", markersize=4)
                    drawn = True
        if drawn:
            ax.set_xlabel("optimizer step")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
            written.append(path)
        plt.close(fig)
    return written
