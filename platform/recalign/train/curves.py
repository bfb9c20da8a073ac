"""Training curves (loss per epoch, validation metrics per evaluation) as JSON and a PNG plot."""

from __future__ import annotations

import io
from typing import Any


def curves(history: list[dict[str, Any]], select: str) -> dict[str, Any]:
    """Columns of the history: epochs, each loss term, validation epochs and metrics."""
    loss_keys = sorted({k for h in history for k, v in h.items()
                        if isinstance(v, (int, float)) and k not in ("epoch", "train_s", "eval_s")})
    val = [h for h in history if "valid" in h]
    metrics = sorted({m for h in val for m in h["valid"] if "@" in m})
    return {
        "epoch": [h["epoch"] for h in history],
        "loss": {k: [h.get(k) for h in history] for k in loss_keys},
        "train_s": [h.get("train_s") for h in history],
        "valid_epoch": [h["epoch"] for h in val],
        "valid": {m: [h["valid"][m] for h in val] for m in metrics},
        "select_metric": select,
    }


def plot_png(c: dict[str, Any]) -> bytes:
    """Two panels: training loss per epoch, validation metrics per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, ys in c["loss"].items():
        a.plot(c["epoch"], ys, label=k)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_yscale("log"), a.legend(fontsize=7)
    a.set_title("training loss")
    for m, ys in c["valid"].items():
        b.plot(c["valid_epoch"], ys, marker="o", ms=3, label=m)
    b.set_xlabel("epoch"), b.set_title(f"validation (select: {c['select_metric']})")
    b.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
