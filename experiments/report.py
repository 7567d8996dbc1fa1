"""docs/experiments.md: settings, figures, a results table and each claim's verdict, all from
one run's numbers (plus experiments/notes.md: the discussion written after reading them)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from experiments import claims, plots
from experiments.curves import final, seconds_per_step
from experiments.methods import draftp_name

NOTES = Path(__file__).with_name("notes.md")


def _table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _utc(timestamp: float) -> str:
    return f"{datetime.fromtimestamp(timestamp, timezone.utc):%Y-%m-%d %H:%M}"


def results_table(results: dict) -> str:
    one = seconds_per_step(results["DRaFT-1"]) if "DRaFT-1" in results else None
    rows = []
    for name, runs in results.items():
        reward, spread = final(runs)
        base = runs[0]["val"][0]["reward"]
        per_step = seconds_per_step(runs)
        rows.append(
            [
                name,
                f"{base:.4f}",
                f"{reward:.4f} +- {spread:.4f}",
                f"{final(runs, 'diversity')[0]:.4f}",
                f"{sum(r['unconditional']['1']['diversity'] for r in runs) / len(runs):.4f}",
                runs[0]["val"][-1]["step"],
                f"{sum(r['val'][-1]['queries'] for r in runs) / len(runs):.0f}",
                f"{per_step:.2f}",
                "" if one is None else f"{per_step / one:.2f}",
            ]
        )
    headers = [
        "method",
        "reward at step 0",
        "final reward (mean +- sd over seeds)",
        "final val/diversity (captions)",
        "final diversity (empty prompt)",
        "optimiser steps",
        "reward queries",
        "s / step",
        "step time / DRaFT-1's",
    ]
    return _table(headers, rows)


def diversity_points(
    results: dict, settings: dict, early_stopping: list[dict] | None = None
) -> dict[str, dict[str, tuple]]:
    """(validation reward on the captions, diversity of the empty prompt's samples), means
    over seeds, per variant and grouped by role: the base model (step 0; the adapter at
    strength 0), unregularised DRaFT-LV, DRaFT+ at each weight, and the DRaFT-LV adapter at
    each LoRA scale; with `early_stopping` (DRaFT-LV runs that measured the empty prompt at
    every evaluation) also its path. The reward is the one trained for; the diversity is
    the model's."""
    lv = results["DRaFT-LV (n=2)"]

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    def diversity(runs: list[dict], scale: float) -> float:
        return mean(run["unconditional"][f"{scale:g}"]["diversity"] for run in runs)

    def trained(runs: list[dict]) -> tuple[float, float]:
        return final(runs)[0], diversity(runs, 1.0)

    def scaled(x: float) -> tuple[float, float]:
        return mean(run["lora_scaled"][str(x)]["reward"] for run in lv), diversity(lv, x)

    early = {}
    if early_stopping:
        for i in range(min(len(run["val"]) for run in early_stopping)):
            evaluations = [run["val"][i] for run in early_stopping]
            early[f"step {evaluations[0]['step']}"] = (
                mean(e["reward"] for e in evaluations),
                mean(e["unconditional"]["diversity"] for e in evaluations),
            )
    return {
        "early": early,
        "base": {"base model": (mean(run["val"][0]["reward"] for run in lv), diversity(lv, 0.0))},
        "plain": {"DRaFT-LV": trained(lv)},
        "kl": {f"DRaFT+ kl {c:g}": trained(results[draftp_name(c)]) for c in settings["kl_coeffs"]},
        "scaled": {f"LoRA scale {x:g}": scaled(x) for x in settings["lora_scales"]},
    }


def toy_model_facts(folder: str) -> str:
    """How the toy model was pretrained and how well it follows captions (its quality.json),
    so the doc names the exact model the numbers come from."""
    import json

    report = Path(folder).expanduser() / "quality.json"
    if not report.is_file():
        return ""
    quality = json.loads(report.read_text())
    settings = quality.get("settings", {})
    keys = ("classifier_steps", "vae_steps", "unet_steps", "unet_batch", "unet_lr", "seed")
    trained = ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)
    by_guidance = quality.get("generation", {}).get("by_guidance", {})
    agreement = "; ".join(
        f"guidance {scale}: " + ", ".join(f"{a} {v:.2f}" for a, v in values.items())
        for scale, values in by_guidance.items()
    )
    return (
        f"- Toy model pretraining (its quality.json): {trained}"
        + (f"; architecture {settings['architecture']}" if "architecture" in settings else "")
        + f". Caption agreement of generated images (toy classifier): {agreement}."
    )


DDPO_LONG = "DDPO, long run (one seed)"


def write_report(everything: dict, out: Path, figures: Path, command: str) -> None:
    settings, results = everything["settings"], everything["results"]
    norms = everything["gradient_norms"]
    ddpo_long = everything.get("ddpo_long")
    # The long run joins the table and its own figure (in every other figure its longer
    # axis would squash the rest); appended last, so every method keeps its colour.
    with_long = {**results, DDPO_LONG: [ddpo_long]} if ddpo_long else results
    relative = os.path.relpath(figures, out.parent)
    figure_paths = {
        "queries": plots.reward_curves(results, "queries", figures / "reward_vs_queries.png",
                                       log_x=True),
        "seconds": plots.reward_curves(results, "seconds", figures / "reward_vs_seconds.png"),
        "steps": plots.reward_curves(
            results,
            "step",
            figures / "reward_vs_steps_k.png",
            names={"DRaFT-1", "DRaFT-K (K=5)", "DRaFT-K (K=10)", "full DRaFT", "DRaFT-LV (n=2)"},
        ),
        "norms": plots.gradient_norms(norms, figures / "gradient_norm_vs_k.png"),
    }  # fmt: skip
    if ddpo_long:
        figure_paths["ddpo_long"] = plots.reward_curves(
            with_long,
            "queries",
            figures / "ddpo_long_run.png",
            names={"DRaFT-1", "DRaFT-LV (n=2)", "DDPO", DDPO_LONG},
            log_x=True,
        )
    points = diversity_points(results, settings, everything.get("early_stopping"))
    figure_paths["diversity"] = plots.diversity(points, figures / "diversity.png")

    verdicts = []
    checks = [
        ("DRaFT-LV reaches DRaFT-1's reward in fewer steps at small extra cost",
         lambda: claims.lv_faster_than_one(results)),
        ("Small K beats full backpropagation per step, and the gradient norm grows with K",
         lambda: claims.small_k_beats_full(results, norms)),
        ("Gradient methods need far fewer reward queries than DDPO",
         lambda: claims.fewer_queries_than_ddpo(results, ddpo_long)),
        ("Unregularised training loses diversity; the DRaFT+ term or LoRA scaling keeps more",
         lambda: claims.diversity_kept(points)),
    ]  # fmt: skip
    for claim, check in checks:
        try:
            verdict, evidence = check()
        except KeyError as missing:  # a method left out with --methods
            verdict, evidence = "not run", f"needs the {missing} runs"
        verdicts.append([claim, f"**{verdict}**", evidence])

    def figure(key: str, caption: str) -> str:
        return f"![{caption}]({relative}/{figure_paths[key].name})\n\n*{caption}*\n"

    s = settings
    reward = (
        f"ToyAttributeReward({s['reward_attribute']}={s['reward_value']}, temperature "
        f"{s['reward_temperature']}): the toy classifier's probability of that attribute "
        "(logits divided by the temperature), for every prompt, whatever the caption asks for"
        if s["use_toy_reward"]
        else "Brightness (smoke run on the random tiny model)"
    )
    doc = [
        "# Experiments: the paper's findings on the toy world\n",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; its runs "
        f"finished between {_utc(everything['finished'][0])} and "
        f"{_utc(everything['finished'][1])} UTC ({everything['seconds'] / 60:.0f} min in this "
        "invocation, the rest read from its cache; "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, no GPU). Do not edit "
        "by hand: rerun it. Every number and figure below comes from that run.\n",
        "## Setup\n",
        f"- Model: `{s['pretrained_model']}` (`make toy`), DDIM {s['num_steps']} steps, "
        f"guidance {s['guidance_scale']}, {s['resolution']} px.",
        toy_model_facts(s["pretrained_model"]) if s["use_toy_reward"] else "",
        f"- Reward: {reward}.",
        f"- Gradient methods: LoRA rank {s['lora_rank']}, AdamW lr {s['lr']} (no weight "
        f"decay), gradient clipping 1.0, batch {s['batch_size']}, {s['gradient_steps']} "
        "optimiser steps; the same settings for every method, not tuned per method.",
        f"- DDPO: eta 1, batch {s['ddpo_batch_size']} trajectories, 2 PPO updates per batch, "
        f"{s['ddpo_batches']} batches, AdamW lr {s['ddpo_lr']} (weight decay 1e-4), clip "
        "range 1e-4, per-prompt reward statistics once a caption has 16 rewards (the batch's "
        "until then)."
        + (
            f" Its long run: seed {s['ddpo_long_seed']}, {s['ddpo_long_batches']} batches, "
            f"evaluated every {s['ddpo_long_val_every']} batches."
            if ddpo_long
            else " No long run (`--ddpo-long-batches`)."
        ),
        f"- Validation: {s['num_val_prompts']} fixed captions x {s['num_val_seeds']} seeds "
        f"every {s['val_every']} steps; seeds {', '.join(map(str, s['seeds']))} for every "
        "method. Curves are means over seeds, shaded min to max.",
        "- Diversity: the mean pairwise "
        + (
            "cosine distance between the toy classifier's penultimate-layer features (what "
            "the images depict, not their pixels)"
            if s["use_toy_reward"]
            else "RMS pixel distance"
        )
        + f", as `val/diversity` computes it, among {s['diversity_seeds']} final samples of the "
        "empty prompt (the toy model learned it as its caption-dropout branch, so they vary in "
        "every attribute); `val/diversity` on the validation captions is listed too. Early "
        "stopping: DRaFT-LV trained again with the empty prompt measured at every evaluation. "
        "DRaFT+: DRaFT-LV with kl_coeff "
        + ", ".join(f"{c:g}" for c in s["kl_coeffs"])
        + "; LoRA scaling: each seed's trained DRaFT-LV adapter evaluated at strength "
        + ", ".join(f"{x:g}" for x in s["lora_scales"])
        + ".\n",
        "## The claims\n",
        _table(["claim (the paper)", "verdict", "evidence from this run"], verdicts) + "\n",
        NOTES.read_text().strip() + "\n" if NOTES.exists() else "",
        "## Results\n",
        results_table(with_long) + "\n",
        figure("queries", "Validation reward against reward queries (images scored)."),
        figure("seconds", "Validation reward against training wall time on this CPU."),
        figure("steps", "Validation reward against optimiser steps: K and DRaFT-LV."),
        figure("norms", "LoRA gradient norm of DRaFT-K's loss at the pretrained model."),
        figure(
            "ddpo_long",
            f"DDPO's long run (one seed) and its {len(s['seeds'])}-seed runs against DRaFT-1 "
            "and DRaFT-LV: validation reward against reward queries.",
        )
        if ddpo_long
        else "",
        figure(
            "diversity",
            "Validation reward (captions) against the diversity of the empty prompt's "
            "samples: base model, DRaFT-LV and the remedies.",
        ),
    ]
    _write(out, "\n".join(doc))
