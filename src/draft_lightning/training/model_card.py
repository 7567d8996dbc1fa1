"""The README.md written beside each exported adapter: what it is, how it was trained, how
well it scored, and how to load it; with the YAML metadata block the Hugging Face Hub reads
(base model, library, tags, a sample picture), the same fields diffusers' training scripts
fill through huggingface_hub's ModelCardData."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from draft_lightning.models.lora import KOHYA_WEIGHTS_NAME

SAMPLES_NAME = "samples.png"
# The Hub's tag for each model family (the family's `name`).
FAMILY_TAGS = {
    "sd": "stable-diffusion",
    "sdxl": "stable-diffusion-xl",
    "flux": "flux",
    "sd3": "sd3",
}


@dataclass
class CardFacts:
    """What a model card states about one exported adapter."""

    base_model: str
    pipeline_class: str
    family: str
    reward: str
    step: int
    settings: dict[str, Any]
    formats: list[str]
    base_reward: float | None = None  # val/reward of the base model (step 0)
    export_reward: tuple[int, float] | None = None  # the latest val/reward: (step, value)
    samples_step: int | None = None  # the evaluation drawn in samples.png
    sample_prompt: str | None = None
    command: str = field(default_factory=lambda: command_line(sys.argv))


def command_line(argv: list[str]) -> str:
    """The command that made the run, as a user would type it."""
    return shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else ""


def hub_base_model(name: str) -> str | None:
    """`name` when it reads as a Hub id (owner/name, no local folder of that name): the
    `base_model` field the Hub links; None for local folders and registered names."""
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or ":" in name or Path(name).exists():
        return None
    return name


def model_card(facts: CardFacts) -> str:
    """The README.md text: YAML metadata, then the card."""
    from huggingface_hub import ModelCardData

    tags = ["text-to-image", "diffusers", "lora", "template:sd-lora", "draft-lightning"]
    tags += [FAMILY_TAGS[facts.family]] if facts.family in FAMILY_TAGS else []
    widget = None
    if facts.samples_step is not None:
        widget = [{"text": facts.sample_prompt or "", "output": {"url": SAMPLES_NAME}}]
    metadata = ModelCardData(
        base_model=hub_base_model(facts.base_model),
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=tags,
        widget=widget,
    )
    return f"---\n{metadata.to_yaml()}\n---\n\n{card_body(facts)}"


def card_body(facts: CardFacts) -> str:
    estimator = facts.settings.get("estimator", "").split("(")[0]  # the class name
    method = estimator or facts.settings.get("method", "reward fine-tuning")
    how = (
        f"by backpropagating it through the sampling chain ({estimator})"
        if estimator
        else f"with {method}"
    )
    lines = [
        f"# {method} LoRA for {facts.base_model}",
        "",
        f"A LoRA adapter for `{facts.base_model}` fine-tuned with draft-lightning to maximise "
        f"the reward **{facts.reward}** {how}, exported after **{facts.step}** optimiser "
        "steps.",
        "",
        "## Validation reward",
        "",
        "| | step | val/reward |",
        "|---|---|---|",
    ]
    if facts.base_reward is not None:
        lines.append(f"| base model | 0 | {facts.base_reward:.4f} |")
    if facts.export_reward is not None:
        step, value = facts.export_reward
        lines.append(f"| this adapter (latest evaluation) | {step} | {value:.4f} |")
    if facts.export_reward is None:
        lines.append("| this adapter | - | not evaluated yet |")
    lines += ["", "Means over fixed validation prompts and seeds."]
    if facts.samples_step is not None:
        lines += [
            "",
            f"![validation samples at step {facts.samples_step}]({SAMPLES_NAME})",
            "",
            f"Validation samples at step {facts.samples_step}"
            f"{' (the base model, before training)' if facts.samples_step == 0 else ''}: "
            "reward, seed and prompt under each image.",
        ]
    lines += ["", "## Use it", ""] + usage(facts)
    lines += [
        "",
        "## Training settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in facts.settings.items()),
        "",
        "Made by:",
        "",
        "```bash",
        facts.command,
        "```",
        "",
        "The run's full configuration is `config.yaml` in its log folder.",
        "",
    ]
    return "\n".join(lines)


def usage(facts: CardFacts) -> list[str]:
    lines = []
    if "diffusers" in facts.formats:
        lines += [
            "```python",
            f"from diffusers import {facts.pipeline_class}",
            "",
            f'pipe = {facts.pipeline_class}.from_pretrained("{loadable(facts.base_model)}")',
            'pipe.load_lora_weights("path/to/this/folder")',
            "```",
        ]
    if "kohya" in facts.formats:
        lines += [
            "",
            f"AUTOMATIC1111, ComfyUI, SD.Next, InvokeAI: copy `{KOHYA_WEIGHTS_NAME}` into "
            "their LoRA folder (`models/Lora`, `models/loras`).",
        ]
    return lines


def loadable(base_model: str) -> str:
    """What from_pretrained takes for the base model: a Hub id or a folder as given; for a
    name only draft-lightning resolves (tiny:sd, toy:sd), a placeholder naming it."""
    if hub_base_model(base_model) or Path(base_model).exists():
        return base_model
    return f"path/to/{base_model.replace(':', '-')}"
