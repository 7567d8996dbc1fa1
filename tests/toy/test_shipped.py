"""The toy parts shipped in the package: their hashes match the manifest, they load through
the same from_pretrained path as any checkpoint, and a newer `make toy` output replaces them."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch

from draft_lightning.errors import ConfigError
from draft_lightning.toy import paths
from draft_lightning.toy.shipped import MAX_BYTES, mismatches, ship

SHIPPED = paths.SHIPPED_ROOT


def test_shipped_files_match_their_manifest():
    manifest = json.loads((SHIPPED / paths.MANIFEST_FILE).read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["commit"]), manifest["commit"]
    assert mismatches(SHIPPED) == []
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    for name in (paths.MODEL_FOLDER, paths.CLASSIFIER_FOLDER, paths.JUDGE_FOLDER):
        assert f"{name}/{paths.MARKERS[name]}" in manifest["files"]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]  # no pickles


def test_a_tampered_file_is_a_mismatch(tmp_path):
    copy = tmp_path / "pretrained"
    shutil.copytree(SHIPPED, copy)
    with open(copy / paths.CLASSIFIER_FOLDER / "config.json", "a") as f:
        f.write(" ")
    (copy / "extra.txt").write_text("not in the manifest")
    assert mismatches(copy) == ["extra.txt", f"{paths.CLASSIFIER_FOLDER}/config.json"]


def test_shipped_parts_load_when_the_cache_is_empty(tmp_path, monkeypatch):
    from draft_lightning.models.loading import resolve_pretrained
    from draft_lightning.module import DraftModule
    from draft_lightning.samplers.settings import SamplingSettings
    from draft_lightning.toy.judge import ToyJudgeReward
    from draft_lightning.toy.rewards import ToyAttributeReward

    monkeypatch.setenv("DRAFT_LIGHTNING_CACHE", str(tmp_path))
    assert resolve_pretrained("toy:sd") == SHIPPED / paths.MODEL_FOLDER
    reward = ToyAttributeReward("colour", "red")  # classifier: null
    judge = ToyJudgeReward("colour", "red")  # judge: null
    module = DraftModule(
        reward=reward,
        pretrained_model="toy:sd",
        sampling=SamplingSettings(num_steps=10, guidance_scale=3.0, resolution=32),
    ).eval()
    assert next(module.pipeline.denoiser.parameters()).dtype == torch.float32  # from float16
    from draft_lightning.toy import world
    from draft_lightning.toy.data import HELD_OUT_SEED, batch

    captions = [s.caption for s in world.scenes(5, range(4))]
    images = module.generate(captions, list(range(4)))
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()
    assert images.std() > 0.05  # pictures, not a flat field
    # The shipped readers are the trained ones: they read held-out renders of the world.
    held_out = batch(HELD_OUT_SEED, 0, 64)
    truth = torch.tensor([world.parse_caption(c)["colour"] == "red" for c in held_out["captions"]])
    read_red = reward.probabilities(held_out["images"]).argmax(dim=1) == reward.index
    judged_red = judge.verdicts(held_out["images"], held_out["captions"])
    for red in (read_red, judged_red):
        assert (red == truth).float().mean() >= 0.95
    assert not list(tmp_path.iterdir())  # nothing was built into the cache


def test_a_newer_make_toy_output_replaces_the_shipped_one(tmp_path, monkeypatch):
    cached = tmp_path / paths.MODEL_FOLDER
    shutil.copytree(SHIPPED / paths.MODEL_FOLDER, cached)
    marker = cached / paths.MARKERS[paths.MODEL_FOLDER]
    created = paths.shipped_created()
    os.utime(marker, (created - 60, created - 60))  # an older make toy: the shipped one wins
    assert paths.toy_sd_path(tmp_path) == SHIPPED / paths.MODEL_FOLDER
    os.utime(marker, (created + 60, created + 60))
    assert paths.toy_sd_path(tmp_path) == cached


def test_ship_copies_a_cache_with_half_precision_weights_and_a_manifest(tmp_path):
    from safetensors.torch import load_file

    cache, target = tmp_path / "cache", tmp_path / "pretrained"
    shutil.copytree(SHIPPED, cache)
    quality = cache / paths.MODEL_FOLDER / "quality.json"
    report = json.loads(quality.read_text())
    quality.write_text(json.dumps({**report, "commit": None}))
    with pytest.raises(ConfigError, match="pass --commit"):
        ship(cache, target=target)
    manifest = ship(cache, commit="f" * 40, target=target)
    assert manifest["commit"] == "f" * 40 and mismatches(target) == []
    unet = load_file(
        str(target / paths.MODEL_FOLDER / "unet" / "diffusion_pytorch_model.safetensors")
    )
    assert {v.dtype for v in unet.values()} == {torch.float16}
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in SHIPPED.iterdir())
