"""`make toy`'s stages taken from an earlier `make toy` instead of trained again.

The classifier, the judge and the VAE are about a third of `make toy`'s time and do not
depend on anything the UNet is trained with (its captions, steps, learning rate), so a change
that concerns only the UNet need not repeat them: `--reuse <earlier cache folder>` copies them
from there. It is refused, with one line naming the first setting that differs, unless the
earlier run trained them with the same settings on the same version of the world, so the
result is the run `make toy` would make with these settings (up to float noise from thread
counts); quality.json says which stages were reused, from where and at which commit.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from draft_lightning.errors import ConfigError
from draft_lightning.toy import world
from draft_lightning.toy.paths import CLASSIFIER_FOLDER, JUDGE_FOLDER, MODEL_FOLDER, atomic_folder

# Settings each reusable stage was trained with (PretrainSettings' fields).
STAGE_SETTINGS = {
    "classifier": ("seed", "classifier_steps", "classifier_batch", "held_out_images"),
    "judge": ("judge_seed", "judge_steps", "judge_batch", "held_out_images"),
    "vae": ("seed", "vae_steps", "vae_batch", "vae_kl_weight", "held_out_images"),
}
VAE_ARCHITECTURE = ("vae_channels", "vae_layers", "latent_channels", "norm_groups")


def earlier_report(cache: Path) -> dict:
    """The quality.json of the `make toy` output in `cache`, checked to have every stage."""
    report_file = cache / MODEL_FOLDER / "quality.json"
    missing = [
        str(p)
        for p in (report_file, cache / CLASSIFIER_FOLDER, cache / JUDGE_FOLDER)
        if not p.exists()
    ]
    if missing:
        raise ConfigError(
            f"reuse={str(cache)!r} is not an earlier `make toy` output folder (missing "
            f"{', '.join(missing)}): give the $DRAFT_LIGHTNING_CACHE that `make toy` wrote to"
        )
    return json.loads(report_file.read_text())


def check_reusable(earlier: dict, settings) -> None:
    """Raise ConfigError naming the first setting of a reused stage that differs."""
    if earlier.get("world_version") != world.WORLD_VERSION:
        raise ConfigError(
            f"the earlier `make toy` rendered toy world version {earlier.get('world_version')}, "
            f"this code renders {world.WORLD_VERSION}: its stages cannot be reused"
        )
    now = json.loads(json.dumps(asdict(settings)))  # tuples as JSON lists, like the report's
    before = earlier.get("settings", {})
    pairs = [
        (f"settings.{key}", before.get(key), now[key])
        for keys in STAGE_SETTINGS.values()
        for key in keys
    ]
    pairs += [
        (
            f"settings.architecture.{key}",
            before.get("architecture", {}).get(key),
            now["architecture"][key],
        )
        for key in VAE_ARCHITECTURE
    ]
    for name, old, new in pairs:
        if old != new:
            raise ConfigError(
                f"cannot reuse the earlier `make toy`'s classifier, judge and VAE: {name} was "
                f"{old!r} there and is {new!r} here (run without --reuse to train them)"
            )


def copy_stage_folder(source: Path, target: Path) -> None:
    """Copy a reused classifier or judge folder to where this run writes it (atomically)."""
    if source.resolve() == target.resolve():
        return
    with atomic_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def reused_vae(cache: Path):
    """The earlier run's trained VAE (its scaling_factor set), frozen."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(cache / MODEL_FOLDER, subfolder="vae")
    return vae.requires_grad_(False).eval()
