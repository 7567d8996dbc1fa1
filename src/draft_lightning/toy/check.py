"""Check a toy fine-tune with the judge, not with the reward it was trained on.

    python -m draft_lightning.toy.check runs/demo/version_0

Reads the run's config.yaml (model, reward, sampling, validation prompts), generates the
validation prompts with `num_seeds` seeds from the base model and from the exported adapter
(`lora/last`), and reports for each: the training reward's mean, and the judge's verdicts
(toy/judge.py): how many images it reads as the rewarded value, and how many still show
what their caption asks for in every other attribute; and the renderer's reading
(toy/shape_fit.py): the median distance to the nearest clean shape the world can render, and
the fraction of images that show a shape no farther from a clean one than the base model's
farthest. A reward that rises while the judge's verdicts do not, or while the images leave
every clean shape, is being gamed. Writes the figures to `<run>/check-<adapter folder>.json`
(`check-last.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from draft_lightning.errors import ConfigError
from draft_lightning.toy import world
from draft_lightning.toy.judge import CAPTION, ToyJudgeReward, load_judge
from draft_lightning.toy.paths import toy_judge_path
from draft_lightning.toy.shape_fit import nearest_shape

RENDERER_DISTANCE = "renderer: distance to a clean shape"
RENDERER_CLEAN = "renderer: as clean as the base's worst"


def run_settings(run: Path) -> dict:
    """What the check needs from the run's saved config: model, reward, sampling, prompts."""
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run} has no config.yaml: give a run folder (runs/<name>/version_N)")
    config = yaml.safe_load(config_file.read_text())
    model = config["model"].get("init_args", config["model"])
    reward = model["reward"]
    if not reward["class_path"].endswith("ToyAttributeReward"):
        raise ConfigError(f"{run} did not train on ToyAttributeReward ({reward['class_path']})")
    data = config["data"]
    prompts = data.get("val_prompts") or data["train_prompts"][: data["num_val_prompts"]]
    return {
        "pretrained_model": model["pretrained_model"],
        "reward": reward["init_args"],
        "sampling": model["sampling"],
        "prompts": list(prompts),
    }


def judge_figures(
    judges: dict[str, ToyJudgeReward], images: torch.Tensor, prompts: list[str]
) -> dict[str, float]:
    """Fraction of images each judge's verdict accepts, and of those every judge accepts."""
    verdicts = {name: judge.verdicts(images, prompts) for name, judge in judges.items()}
    figures = {name: v.float().mean().item() for name, v in verdicts.items()}
    figures["all"] = torch.stack(list(verdicts.values())).all(dim=0).float().mean().item()
    return figures


def check(
    run: str | Path, num_seeds: int = 8, judge: str | None = None, adapter: str | None = None
) -> dict:
    """The base model's and the tuned adapter's reward and judge figures (see the module)."""
    from draft_lightning.module import DraftModule
    from draft_lightning.samplers.settings import SamplingSettings
    from draft_lightning.toy.rewards import ToyAttributeReward

    run = Path(run)
    adapter = Path(adapter) if adapter else run / "lora" / "last"
    if not (adapter / "pytorch_lora_weights.safetensors").is_file():
        raise ConfigError(f"{run} has no exported adapter at {adapter}")
    settings = run_settings(run)
    reward_args = settings["reward"]
    reward = ToyAttributeReward(**reward_args)
    judge_folder = Path(judge) if judge else toy_judge_path()
    load_judge(judge_folder)  # one clear error before the model loads
    rewarded = reward_args.get("attribute", "shape")
    judges = {
        f"judge: {rewarded} is {reward_args.get('value', 'circle')}": ToyJudgeReward(
            rewarded, reward_args.get("value", "circle"), judge=str(judge_folder)
        )
    }
    for attribute in world.ATTRIBUTES:
        if attribute != rewarded:
            judges[f"judge: {attribute} as captioned"] = ToyJudgeReward(
                attribute, CAPTION, judge=str(judge_folder)
            )
    module = DraftModule(
        reward=reward,
        pretrained_model=settings["pretrained_model"],
        sampling=SamplingSettings(**settings["sampling"]),
        adapters=[str(adapter)],
    ).eval()
    prompts = [p for p in settings["prompts"] for _ in range(num_seeds)]
    seeds = [s for _ in settings["prompts"] for s in range(num_seeds)]
    report = {
        "run": str(run),
        "adapter": str(adapter),
        "images": len(prompts),
        "judge": str(judge_folder),
    }
    tolerance = None
    for label, strength in (("base", 0.0), ("tuned", 1.0)):
        module.pipeline.use_adapters(["mix_0"], [strength])
        images = module.generate(prompts, seeds)
        with torch.no_grad():
            scores = reward(images, prompts)
        report[label] = {"reward": scores.mean().item()} | judge_figures(judges, images, prompts)
        # The renderer's reading (toy/shape_fit.py): a network judge can be fooled the way the
        # reward is; the distance to the nearest clean shape cannot.
        fit = nearest_shape(images)
        tolerance = fit.distance.max().item() if tolerance is None else tolerance
        report[label] |= {
            RENDERER_DISTANCE: fit.distance.median().item(),
            RENDERER_CLEAN: fit.clean(tolerance).float().mean().item(),
        }
    (run / f"check-{adapter.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(
    run: str, num_seeds: int = 8, judge: str | None = None, adapter: str | None = None
) -> None:
    """Judge a toy run's base and tuned images (see the module docstring).

    Args:
        run: the run folder (runs/<name>/version_N) with config.yaml and lora/last.
        num_seeds: seeds per validation prompt.
        judge: a toy judge folder (default: the newest of make toy's and the shipped one).
        adapter: an exported adapter folder to judge instead of `<run>/lora/last` (e.g.
            `<run>/lora/step=20`).
    """
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # The exported adapter is loaded beside the (untrained) default one on purpose.
    warnings.filterwarnings("ignore", message=r".*Already found a `peft_config` attribute.*")
    report = check(run, num_seeds, judge, adapter)
    names = [k for k in report["base"] if k != "reward"]
    print(f"{report['images']} images per model (validation prompts x {num_seeds} seeds)")
    print(f"{'':42} {'base':>7} {'tuned':>7}")
    for name in ["reward", *names]:
        label = "training reward (mean)" if name == "reward" else name
        if name == "all":
            label = "judge: every attribute right"
        print(f"{label:42} {report['base'][name]:7.3f} {report['tuned'][name]:7.3f}")
    print(f"written: {Path(run) / ('check-' + Path(report['adapter']).name + '.json')}")


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main, as_positional=True)
