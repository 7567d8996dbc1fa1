"""The PNG figures of docs/experiments.md (matplotlib, headless)."""

from __future__ import annotations

import statistics
from pathlib import Path

from experiments.stats import mean_interval


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:grey",
    "tab:olive",
    "tab:cyan",
)
X_LABELS = {"queries": "reward queries (images scored)", "step": "optimiser steps"}


def _band(ax, runs: list[dict], x: str, y: str, label: str, colour: str) -> None:
    """Mean over seeds with its 95% t interval shaded."""
    length = min(len(run["val"]) for run in runs)
    xs, means, lows, highs = [], [], [], []
    for i in range(length):
        values = [run["val"][i][y] for run in runs]
        mean, low, high = mean_interval(values)
        xs.append(statistics.fmean(run["val"][i][x] for run in runs))
        means.append(mean)
        lows.append(low)
        highs.append(high)
    ax.plot(xs, means, marker=".", label=label, color=colour)
    ax.fill_between(xs, lows, highs, alpha=0.15, color=colour)


def curves(groups: dict[str, list[dict]], x: str, path: Path, title: str, log_x=False) -> Path:
    """Validation reward (left) and the judge's score (right) against `x`, mean over seeds
    with 95% intervals, one colour per run group."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9), dpi=110, sharex=True)
    for index, (label, runs) in enumerate(groups.items()):
        colour = COLOURS[index % len(COLOURS)]
        _band(axes[0], runs, x, "reward", label, colour)
        _band(axes[1], runs, x, "judge", label, colour)
    for ax, name in zip(axes, ("validation reward", "judge (independent network)"), strict=True):
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("symlog", linthresh=32)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def gradient_norms(norms: dict[int, list[dict[str, list[float]]]], path: Path) -> Path:
    """LoRA gradient norm against K at each chain length: every batch, and the mean."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.8), dpi=110)
    for index, (num_steps, per_seed) in enumerate(sorted(norms.items())):
        colour = COLOURS[index]
        ks = sorted(per_seed[0], key=int)
        for k in ks:
            values = [v for seed in per_seed for v in seed[k]]
            ax.scatter([int(k)] * len(values), values, color=colour, alpha=0.25, s=10)
        means = [statistics.fmean(v for seed in per_seed for v in seed[k]) for k in ks]
        ax.plot([int(k) for k in ks], means, marker="o", color=colour, label=f"T = {num_steps}")
    ax.set_xlabel("K (sampling steps differentiated)")
    ax.set_ylabel("LoRA gradient norm")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def diversity(points: dict[str, list[tuple[float, float]]], path: Path) -> Path:
    """(validation reward, empty prompt's diversity): DRaFT-LV's mean path while training
    (stopping early anywhere on it) and the remedies' end points; up and right is better."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.4), dpi=110)
    for index, (label, xy) in enumerate(points.items()):
        style = (
            {"linestyle": "--", "color": "grey"}
            if label.startswith("DRaFT-LV while")
            else {"color": COLOURS[index % len(COLOURS)], "linestyle": "none"}
        )
        ax.plot(
            [p[0] for p in xy], [p[1] for p in xy], marker="o", markersize=5, label=label, **style
        )
    ax.set_xlabel("validation reward (captions)")
    ax.set_ylabel("diversity (empty prompt's samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def sample_grid(
    rows: dict[str, object],
    captions: list[str],
    path: Path,
    notes: dict[str, list[tuple[str, bool]]] | None = None,
) -> Path:
    """One row of images per method (uint8 [N, 3, H, W]), one column per caption; `notes`
    puts a line under a row's images, green where its flag is True, red where False."""
    plt = _pyplot()
    columns = len(captions)
    fig, axes = plt.subplots(
        len(rows),
        columns,
        figsize=(1.1 * columns + 1.8, (1.3 if notes else 1.15) * len(rows) + 0.9),
        dpi=110,
        squeeze=False,
    )
    for r, (label, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
            if r == 0:
                ax.set_title(_wrap(captions[c]), fontsize=5)
            if notes and label in notes:
                text, good = notes[label][c]
                ax.set_xlabel(text, fontsize=5, color="tab:green" if good else "tab:red")
    return _save(fig, path)


def _wrap(text: str, width: int = 18) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    _pyplot().close(fig)
    tmp.replace(path)
    return path
