"""Training logs: every Trainer log row to JSONL and the console, and a loss-curve PNG at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from transformers import TrainerCallback

console = Console(stderr=True)


class JsonlLogCallback(TrainerCallback):
    """Appends each log row (step, epoch, loss, lr and the trainer's own metrics) to `path`."""

    def __init__(self, path: str | Path, quiet: bool = False) -> None:
        self.path = Path(path)
        self.quiet = quiet

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if not self.quiet:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            console.print(f"[dim]{shown}[/dim]")


def plot_loss_curve(log_path: str | Path, out_png: str | Path, keys: tuple[str, ...] = ("loss", "nll")) -> Path | None:
    """Plot `keys` against the step from a JSONL training log; None when there is nothing to plot."""
    rows = [json.loads(x) for x in Path(log_path).read_text().splitlines() if x.strip()] \
        if Path(log_path).is_file() else []
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, pts in series.items():
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
