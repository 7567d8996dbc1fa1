"""The reward-hacking picture and table of docs/reward_hacking.md, from a finished toy run.

    lightning fit --config configs/draft_lv.yaml --config configs/toy.yaml
    python scripts/reward_hacking_figure.py runs/toy/version_0

Reads the run's validation curves (TensorBoard events), names the checkpoint the guarded
rule selected (best_checkpoint) and the one the plain rule (highest val/reward) would have,
and draws the same captions and seeds with the base model, the selected adapter and the
plain rule's adapter (`lora/step=<N>/`), each image scored by the reward and the judge.
"""

from __future__ import annotations

import argparse
import math
from fnmatch import fnmatch
from pathlib import Path

import torch
import yaml
from PIL import Image, ImageDraw, ImageFont
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
TAGS = (
    "val/reward",
    "val/heldout/judge_shape_circle",
    "val/heldout/*",
    "val/diversity",
    "val/hacking",
    "val/guarded_reward",
)
# What each image is scored by in the picture: the training reward, and the judge on the
# reward's question and on the caption's other attributes (configs/toy.yaml's held-out rewards).
CAPTIONED = ("colour", "background", "size", "position")


def curves(run: Path) -> dict[str, dict[int, float]]:
    """The validation scalars of TAGS ("val/heldout/*": every held-out reward), in order."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    found = events.Tags()["scalars"]
    tags = [t for pattern in TAGS for t in sorted(found) if fnmatch(t, pattern)]
    tags = list(dict.fromkeys(tags))  # each once, in the order of TAGS
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags}


def table(values: dict[str, dict[int, float]]) -> str:
    tags = list(values)
    lines = ["| step | " + " | ".join(f"`{t.removeprefix('val/')}`" for t in tags) + " |"]
    lines.append("|---" * (len(tags) + 1) + "|")
    for step in sorted(values["val/reward"]):
        cells = []
        for tag in tags:
            value = values[tag].get(step, math.nan)
            cells.append("diverging" if tag == "val/guarded_reward" and math.isnan(value) else
                         f"{value:.0f}" if tag == "val/hacking" else f"{value:.3f}")  # fmt: skip
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(rows: list[tuple[str, Path | None, float]], out: Path, scale: int = 3) -> None:
    """One row per (label, exported adapter folder or None for the base model, LoRA strength): 8
    training captions, seed 0, each image under its scores: reward / judge on the reward's
    question (circle) / judge's agreement with the caption's other attributes (the mean of
    its probabilities for the captioned colour, background, size and position)."""
    from draft_lightning.module import DraftModule
    from draft_lightning.samplers.settings import SamplingSettings
    from draft_lightning.toy.judge import ToyJudgeReward
    from draft_lightning.toy.rewards import ToyAttributeReward

    config = yaml.safe_load((ROOT / "configs" / "toy.yaml").read_text())
    prompts = config["data"]["train_prompts"]
    reward = ToyAttributeReward("shape", "circle", temperature=10.0)
    judge = ToyJudgeReward("shape", "circle")
    captioned = [ToyJudgeReward(attribute, "caption") for attribute in CAPTIONED]
    module = DraftModule(
        reward=reward,
        pretrained_model="toy:sd",
        sampling=SamplingSettings(num_steps=20, guidance_scale=3.0, resolution=32),
    )
    font = ImageFont.load_default()
    cell, label_height, left = 32 * scale, 16, 190
    sheet = Image.new(
        "RGB", (left + cell * len(prompts), len(rows) * (cell + label_height)), "white"
    )
    pen = ImageDraw.Draw(sheet)
    loaded: dict[Path, str] = {}
    for row, (label, adapter, strength) in enumerate(rows):
        if adapter is None:
            module.pipeline.use_adapters(["default"], [0.0])  # the base model exactly
        else:
            if adapter not in loaded:
                loaded[adapter] = f"adapter_{len(loaded)}"
                module.pipeline.load_lora(adapter, adapter_name=loaded[adapter])
            module.pipeline.use_adapters([loaded[adapter]], [strength])
        images = module.generate(prompts, [0] * len(prompts))
        with torch.no_grad():
            scores = reward(images, prompts)
            judged = judge(images, prompts)
            agreement = torch.stack([j(images, prompts) for j in captioned]).mean(dim=0)
            as_captioned = torch.stack([j.verdicts(images, prompts) for j in captioned]).all(0)
        circles = float(judge.verdicts(images, prompts).float().mean())
        print(f"{label}: reward {scores.mean():.3f}, judge circle {judged.mean():.3f} "
              f"(judged circles {circles:.2f}), judge caption agreement {agreement.mean():.3f} "
              f"(colour, background, size, position all as captioned "
              f"{as_captioned.float().mean():.2f})")  # fmt: skip
        top = row * (cell + label_height)
        pen.text((4, top + cell // 2 - 16), label, fill="black", font=font)
        pen.text(
            (4, top + cell // 2),
            f"{scores.mean():.2f} / {judged.mean():.2f} / {agreement.mean():.2f}",
            fill="black",
            font=font,
        )
        for column, image in enumerate(images):
            pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            picture = Image.fromarray(pixels).resize((cell, cell), Image.NEAREST)
            sheet.paste(picture, (left + column * cell, top))
            pen.text(
                (left + column * cell + 2, top + cell + 2),
                f"{scores[column]:.2f}/{judged[column]:.2f}/{agreement[column]:.2f}",
                fill="black",
                font=font,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the toy run's version folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/reward_hacking.png")
    parser.add_argument(
        "--strengths", type=float, nargs="*", default=[], help="also draw the plain rule's "
        "adapter at these LoRA strengths (the paper's LoRA scaling)",
    )  # fmt: skip
    parser.add_argument(
        "--also", type=Path, nargs="*", default=[], help="other toy runs (e.g. DRaFT+) whose "
        "guarded selection (lora/best) to draw too",
    )  # fmt: skip
    args = parser.parse_args()
    values = curves(args.run)
    print(table(values))
    best = sorted((args.run / "checkpoints").glob("best-step=*.ckpt"))
    selected = int(best[-1].name.split("-")[1].removeprefix("step=")) if best else None
    rewards = {s: v for s, v in values["val/reward"].items() if s > 0}
    plain = max(rewards, key=rewards.get)  # what best_checkpoint.monitor: val/reward keeps
    flagged = [s for s, v in values.get("val/hacking", {}).items() if v == 1]
    print(f"selected (guarded rule): step {selected}; plain rule: step {plain}; flagged: {flagged}")
    lora = args.run / "lora"
    rows: list[tuple[str, Path | None, float]] = [("before: base model", None, 0.0)]
    if selected is not None:
        rows.append((f"selected: step {selected} (guarded)", lora / f"step={selected}", 1.0))
    if plain != selected:
        rows.append((f"hacked: step {plain} (plain rule)", lora / f"step={plain}", 1.0))
    rows += [
        (f"step {plain} at LoRA strength {s:g}", lora / f"step={plain}", s) for s in args.strengths
    ]
    for other in args.also:
        model = yaml.safe_load((other / "config.yaml").read_text())["model"]
        kl = model.get("init_args", model).get("kl_coeff", 0.0)
        best = sorted((other / "checkpoints").glob("best-step=*.ckpt"))
        if best:
            step = int(best[-1].name.split("-")[1].removeprefix("step="))
            rows.append((f"kl {kl:g}: step {step} (guarded)", other / "lora" / f"step={step}", 1.0))
    draw(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
