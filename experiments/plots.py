"""The PNG figures of docs/experiments.md (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from experiments.curves import mean_curve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reward_curves(results: dict, x: str, path: Path, names=None, log_x=False) -> Path:
    """Mean validation reward (shaded: min-max over seeds) against `x` for each method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    colours = plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]
    for index, (name, runs) in enumerate(results.items()):
        if names is not None and name not in names:
            continue
        colour = colours[index % len(colours)]  # one per method in every figure, 20 distinct
        points = mean_curve(runs, x, "reward")
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1] for p in points], marker=".", label=name, color=colour)
        ax.fill_between(
            xs, [p[2] for p in points], [p[3] for p in points], alpha=0.15, color=colour
        )
    labels = {"queries": "reward queries (images scored)", "seconds": "training seconds (CPU)",
              "step": "optimiser steps"}  # fmt: skip
    ax.set_xlabel(labels[x])
    ax.set_ylabel("validation reward")
    if log_x:
        ax.set_xscale("symlog", linthresh=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def gradient_norms(norms: dict[str, list[float]], path: Path) -> Path:
    plt = _pyplot()
    ks = sorted(norms, key=int)
    means = [sum(norms[k]) / len(norms[k]) for k in ks]
    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=110)
    for k in ks:
        ax.scatter([int(k)] * len(norms[k]), norms[k], color="tab:blue", alpha=0.3, s=12)
    ax.plot([int(k) for k in ks], means, marker="o", color="tab:blue", label="mean")
    ax.set_xlabel("K (sampling steps differentiated)")
    ax.set_ylabel("LoRA gradient norm")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def diversity(points: dict[str, dict[str, tuple[float, float]]], path: Path) -> Path:
    """Final (reward, diversity) of each variant, one colour per role, each sweep joined in
    order: up and right is better on both."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.4), dpi=110)
    labels = {
        "early": "DRaFT-LV while training (stop early)",
        "base": "base model",
        "plain": "DRaFT-LV, end",
        "kl": "DRaFT+ (kl_coeff)",
        "scaled": "LoRA scaling",
    }
    for role, variants in points.items():
        if not variants:
            continue
        rewards = [p[0] for p in variants.values()]
        spreads = [p[1] for p in variants.values()]
        style = {"linestyle": "--", "color": "grey"} if role == "early" else {}
        ax.plot(rewards, spreads, marker="o", markersize=5, linewidth=0.8,
                label=labels.get(role, role), **style)  # fmt: skip
        if role == "early":
            continue  # its steps would crowd the labels of the others
        for name, (reward, spread) in variants.items():
            ax.annotate(
                name, (reward, spread), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
    ax.set_xlabel("validation reward (captions)")
    ax.set_ylabel("diversity (empty prompt's samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    _pyplot().close(fig)
    tmp.replace(path)
    return path
