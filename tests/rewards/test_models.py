"""Model rewards on their tiny stand-ins: formats on disk, scoring, gradients, preprocessing
parity with the reference pipelines (open_clip's transforms, CLIPProcessor), freezing, dtype,
checkpointing and one-line errors for missing weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.rewards import (
    AestheticReward,
    CLIPScoreReward,
    HPSv2Reward,
    ImageTransform,
    PickScoreReward,
)
from draft_lightning.testing.tiny_rewards import TINY_OPEN_CLIP_NAME, register_tiny_clip, tiny_path

PROMPTS = ["a photo of a cat", "a red car on a snowy road"]
TINY_ARGS = {
    "aesthetic": (
        AestheticReward,
        {"head": "tiny:aesthetic", "clip_model": "tiny:clip", "clip_pretrained": "tiny:clip"},
    ),
    "clip_score": (CLIPScoreReward, {"model": "tiny:clip", "pretrained": "tiny:clip"}),
    "hpsv2": (HPSv2Reward, {"checkpoint": "tiny:hpsv2", "clip_model": "tiny:clip"}),
    "pickscore": (PickScoreReward, {"model": "tiny:pickscore", "processor": "tiny:pickscore"}),
}
NAMES = list(TINY_ARGS)


def build(name: str, **overrides):
    cls, kwargs = TINY_ARGS[name]
    return cls(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def rewards() -> dict:
    return {name: build(name) for name in NAMES}


def smooth_images(h: int, w: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    """Photo-like uint8 images: random ramps and low-frequency waves per channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    images = []
    for _ in range(n):
        channels = []
        for _ in range(3):
            a = torch.rand(6, generator=g)
            wave = torch.sin(2 * math.pi * (2 * a[2] * x + 2 * a[3] * y) + 6 * a[4])
            channels.append(a[0] * x + a[1] * y + 0.3 * wave + 0.2 * torch.cos(6 * a[5] * x * y))
        image = torch.stack(channels)
        image = (image - image.amin()) / (image.amax() - image.amin())
        images.append((image * 255).round().to(torch.uint8))
    return torch.stack(images)


# --- the stand-ins are the published formats -------------------------------------------------


def test_stand_ins_are_saved_in_the_published_formats():
    from safetensors.torch import load_file

    head = torch.load(tiny_path("tiny:aesthetic"), weights_only=True)
    expected = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert set(head) == expected
    assert [head[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)] == [1024, 128, 64, 16, 1]

    import open_clip

    register_tiny_clip()
    keys = set(open_clip.create_model(TINY_OPEN_CLIP_NAME).state_dict())
    hps = torch.load(tiny_path("tiny:hpsv2"), weights_only=True)
    assert set(hps) == {"state_dict"} and set(hps["state_dict"]) == keys
    assert set(load_file(tiny_path("tiny:clip"))) == keys

    folder = tiny_path("tiny:pickscore")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (folder / name).is_file()
    for name in ("vocab.json", "merges.txt"):  # the Hub's CLIP tokenizer files
        assert (folder / name).is_file()


def test_pickscore_tokenizer_is_the_real_clip_bpe(rewards):
    ids = rewards["pickscore"].tokenizer(PROMPTS, padding=True)["input_ids"]
    unk = rewards["pickscore"].tokenizer.unk_token_id
    assert all(len(set(row) - {unk}) > 3 for row in ids)
    assert ids[0][0] == 49406  # <|startoftext|>


# --- scoring and gradients --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_scores_a_batch_and_gradients_reach_each_images_pixels(rewards, name):
    reward = rewards[name]
    images = (smooth_images(96, 128, n=2).float() / 255).requires_grad_(True)
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores[0] != scores[1]
    (grad,) = torch.autograd.grad(scores[0], images)
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0  # images are scored apart


@pytest.mark.parametrize("name", NAMES)
def test_rewards_are_frozen_and_stay_in_eval_mode(rewards, name):
    reward = rewards[name]
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    assert not any(p.requires_grad for p in reward.parameters())


def test_prompts_change_text_rewards_but_not_the_aesthetic_one(rewards):
    images = smooth_images(64, 64, n=2).float() / 255
    swapped = PROMPTS[::-1]
    with torch.no_grad():
        for name in ("clip_score", "hpsv2", "pickscore"):
            assert not torch.allclose(
                rewards[name](images, PROMPTS), rewards[name](images, swapped)
            )
        aesthetic = rewards["aesthetic"]
        torch.testing.assert_close(aesthetic(images, PROMPTS), aesthetic(images, swapped))


# --- preprocessing parity with the reference pipelines ----------------------------------------

# Tolerances. The reference pipelines resize uint8 PIL images and round back to uint8, ours
# resizes floats, so pixels may differ by about one uint8 level: 1/255/std ~ 0.015 in
# normalised units. We allow two levels at most (0.03) and 0.006 on average (observed: max
# 0.017, mean <= 0.005). Scores must agree within 3% of the spread of the reference scores
# over the test images (observed: under 1%).
MAX_PIXEL, MEAN_PIXEL, SCORE_FRACTION = 0.03, 0.006, 0.03


def open_clip_reference(name: str, reward, pils, prompts):
    """Pixels and scores the way the published scorers compute them."""
    import open_clip

    register_tiny_clip()
    weights = {"aesthetic": "tiny:clip", "clip_score": "tiny:clip", "hpsv2": "tiny:hpsv2"}[name]
    resize = "longest" if name == "hpsv2" else None  # HPSv2's resize_longest_max=True
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_OPEN_CLIP_NAME, pretrained=str(tiny_path(weights)), image_resize_mode=resize
    )
    model.eval()
    pixels = torch.stack([preprocess(p) for p in pils])
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        if name == "aesthetic":
            return pixels, reward.head(image).squeeze(-1)
        text = model.encode_text(open_clip.get_tokenizer(TINY_OPEN_CLIP_NAME)(prompts), True)
        return pixels, torch.diagonal(image @ text.T)


def pickscore_reference(pils, prompts):
    from transformers import CLIPModel, CLIPProcessor

    folder = tiny_path("tiny:pickscore")
    processor, model = CLIPProcessor.from_pretrained(folder), CLIPModel.from_pretrained(folder)
    inputs = processor(
        images=pils, text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
    image = getattr(image, "pooler_output", image)  # transformers 5 returns an output object
    text = getattr(text, "pooler_output", text)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return inputs["pixel_values"], model.logit_scale.exp() * (image * text).sum(-1)


@pytest.mark.parametrize("size", [(64, 80), (300, 200)], ids=["64x80", "300x200"])
@pytest.mark.parametrize("name", NAMES)
def test_tensor_preprocessing_matches_the_reference_pipeline(rewards, name, size):
    reward = rewards[name]
    uint8 = smooth_images(*size)
    pils = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in uint8]
    prompts = [*PROMPTS, "a watercolour of a lighthouse"]
    if name == "pickscore":
        ref_pixels, ref_scores = pickscore_reference(pils, prompts)
    else:
        ref_pixels, ref_scores = open_clip_reference(name, reward, pils, prompts)

    ours = reward.transform(uint8.float() / 255)
    assert ours.shape == ref_pixels.shape
    difference = (ours - ref_pixels).abs()
    assert difference.max() <= MAX_PIXEL and difference.mean() <= MEAN_PIXEL, difference.max()

    with torch.no_grad():
        scores = reward(uint8.float() / 255, prompts)
    spread = (ref_scores.max() - ref_scores.min()).item()
    assert spread > 0
    assert (scores - ref_scores).abs().max() <= SCORE_FRACTION * spread, (scores, ref_scores)


def test_transform_geometry_follows_each_resize_mode():
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    image = torch.rand(1, 3, 30, 60)
    shortest = ImageTransform(size=20, mean=mean, std=std)
    longest = ImageTransform(size=20, mean=mean, std=std, resize_mode="longest", fill=0.25)
    squash = ImageTransform(size=20, mean=mean, std=std, resize_mode="squash")
    for transform in (shortest, longest, squash):
        assert transform(image).shape == (1, 3, 20, 20)
    padded = longest(image)  # 60 -> 20 wide, 30 -> 10 high, 5 rows of padding above and below
    assert torch.all(padded[..., :5, :] == 0.25) and torch.all(padded[..., 15:, :] == 0.25)
    # An odd margin (61 - 20 = 41): torchvision rounds 20.5 to 20, transformers floors to 20;
    # at 63 (43) rounding gives 22 and flooring 21.
    wide = torch.arange(63.0).expand(1, 3, 20, 63)
    rounded = ImageTransform(size=20, mean=mean, std=std, resize_to=20)(wide)
    floored = ImageTransform(size=20, mean=mean, std=std, resize_to=20, crop_offset="floor")
    assert rounded[0, 0, 0, 0] == 22 and floored(wide)[0, 0, 0, 0] == 21


def test_transform_resize_is_torchvision_antialiased_resize():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    image = torch.rand(2, 3, 300, 200)
    ours = ImageTransform(size=224, mean=(0.0,) * 3, std=(1.0,) * 3, resize_mode="squash")
    expected = resize(image, [224, 224], InterpolationMode.BICUBIC, antialias=True)
    torch.testing.assert_close(ours(image), expected)


# --- dtype and gradient checkpointing ---------------------------------------------------------


@pytest.mark.parametrize("name", ["hpsv2", "pickscore"])
def test_bfloat16_weights_score_close_to_float32(rewards, name):
    half = build(name, dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    images = smooth_images(64, 64, n=2).float() / 255
    with torch.no_grad():
        low, full = half(images, PROMPTS), rewards[name](images, PROMPTS)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=0.05 * full.abs().max().item(), rtol=0)


def image_blocks(reward) -> torch.nn.ModuleList:
    """The transformer blocks of a reward's image tower."""
    if isinstance(reward, PickScoreReward):
        return reward.model.vision_model.encoder.layers
    visual = reward.visual if isinstance(reward, AestheticReward) else reward.model.visual
    return visual.transformer.resblocks


def bytes_saved_in_blocks(reward, images) -> tuple[int, int, torch.Tensor]:
    """Bytes autograd stores while the image tower's blocks run, the bytes of the blocks'
    inputs (what checkpointing keeps), and the pixel gradient."""
    inside, total, inputs = [False], 0, 0

    def pack(t):
        nonlocal total
        if inside[0]:
            total += t.numel() * t.element_size()
        return t

    def enter(module, args):
        nonlocal inputs
        inputs += args[0].numel() * args[0].element_size()
        inside[0] = True

    blocks = image_blocks(reward)
    handles = [b.register_forward_pre_hook(enter) for b in blocks]
    handles += [b.register_forward_hook(lambda *_: inside.__setitem__(0, False)) for b in blocks]
    x = images.clone().requires_grad_(True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            scores = reward(x, PROMPTS)
    finally:
        for handle in handles:
            handle.remove()
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return total, inputs, grad


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_keeps_only_block_inputs_and_the_same_gradients(rewards, name):
    images = smooth_images(64, 64, n=2).float() / 255
    plain, block_inputs, plain_grad = bytes_saved_in_blocks(rewards[name], images)
    ckpt, _, ckpt_grad = bytes_saved_in_blocks(build(name, gradient_checkpointing=True), images)
    assert plain > 4 * block_inputs  # a block stores several activations of its input's size
    assert ckpt <= block_inputs  # open_clip keeps them outside the hooked blocks: 0 here
    torch.testing.assert_close(ckpt_grad, plain_grad)


# --- errors: one line, naming the setting and the way out -------------------------------------


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_offline_hub_weights_fail_with_one_line_naming_the_download(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelUnavailableError) as error:
        HPSv2Reward(version="v2.0", clip_model="tiny:clip")
    message = one_line(error)
    assert "HPSv2Reward.checkpoint" in message and "HF_HUB_OFFLINE" in message
    assert "hf download xswu/HPSv2 HPS_v2_compressed.pt" in message
    with pytest.raises(ModelUnavailableError) as error:
        PickScoreReward(processor="tiny:pickscore")
    assert "hf download yuvalkirstain/PickScore_v1" in one_line(error)
    with pytest.raises(ModelUnavailableError) as error:
        PickScoreReward()  # neither the model nor the processor is cached: both named
    message = one_line(error)
    assert message.startswith("2 downloads are missing: (1) PickScoreReward.model")
    assert "(2) PickScoreReward.processor" in message
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message
    with pytest.raises(ModelUnavailableError) as error:
        CLIPScoreReward(model="ViT-B-32", pretrained="openai")
    assert "timm/vit_base_patch32_clip_224.openai" in one_line(error)


def test_aesthetic_names_both_missing_downloads_in_one_line(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelUnavailableError) as error:
        AestheticReward()  # CLIP ViT-L-14/openai and the head: neither is cached
    message = one_line(error)
    assert message.startswith("2 downloads are missing: (1) AestheticReward.clip_pretrained")
    assert "timm/vit_large_patch14_clip_224.openai" in message
    assert "(2) AestheticReward.head" in message and "trl-lib/ddpo-aesthetic-predictor" in message
    # With the CLIP stand-in present, only the head is named, as the loader's own error.
    with pytest.raises(ModelUnavailableError) as error:
        AestheticReward(clip_model="tiny:clip", clip_pretrained="tiny:clip")
    assert one_line(error).startswith("AestheticReward.head: file")


def test_a_wrong_local_path_fails_with_one_line(tmp_path):
    missing = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    with pytest.raises(ModelUnavailableError) as error:
        build("aesthetic", head=str(missing))
    assert "AestheticReward.head" in one_line(error) and str(missing) in one_line(error)
    with pytest.raises(ModelUnavailableError) as error:
        build("pickscore", model=str(tmp_path / "nowhere"))
    assert "PickScoreReward.model" in one_line(error)


class NotATensor:
    pass


def test_unsafe_or_mismatched_weights_are_config_errors(tmp_path):
    pickled = tmp_path / "head.pth"
    torch.save({"layers.0.weight": NotATensor()}, pickled)
    with pytest.raises(ConfigError, match="weights_only=True"):
        build("aesthetic", head=str(pickled))

    unsafe_hps = tmp_path / "HPS_unsafe.pt"  # refused before open_clip ever sees it
    torch.save({"state_dict": {"logit_scale": NotATensor()}}, unsafe_hps)
    with pytest.raises(ConfigError, match="weights_only=True") as error:
        build("hpsv2", checkpoint=str(unsafe_hps))
    one_line(error)

    wide = tmp_path / "wide.pth"  # a real-size head (768-d input) on the 32-d tiny CLIP
    from draft_lightning.rewards.aesthetic import aesthetic_mlp

    torch.save({f"layers.{k}": v for k, v in aesthetic_mlp(768).state_dict().items()}, wide)
    with pytest.raises(ConfigError, match="768-d"):
        build("aesthetic", head=str(wide))

    state = torch.load(tiny_path("tiny:hpsv2"), weights_only=True)["state_dict"]
    state.pop("logit_scale")
    broken = tmp_path / "HPS_broken.pt"
    torch.save({"state_dict": state}, broken)
    with pytest.raises(ConfigError, match="does not load into") as error:
        build("hpsv2", checkpoint=str(broken))
    one_line(error)


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("hpsv2", {"dtype": "float64"}, "dtype='float64'"),
        ("hpsv2", {"version": "v3"}, "version='v3'"),
        ("hpsv2", {"checkpoint": "tiny:nothing"}, "not a known name .known: tiny:aesthetic"),
        ("clip_score", {"model": "ViT-Nope"}, "not an OpenCLIP model"),
        ("clip_score", {"model": "ViT-B-32", "pretrained": "nope"}, "tags: openai"),
        ("aesthetic", {"head": "hf://just-a-repo"}, "hf://<org>/<repo>/<file>"),
    ],
)
def test_bad_values_are_config_errors(name, overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(name, **overrides)


def test_checkpoints_of_training_files_are_unwrapped(tmp_path):
    """A plain open_clip state dict and an HPS-style {"state_dict": ...} file load alike."""
    state = torch.load(tiny_path("tiny:hpsv2"), weights_only=True)["state_dict"]
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    a = build("hpsv2", checkpoint=str(plain))
    b = build("hpsv2")
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key


def test_hub_sources_resolve_from_the_local_cache(monkeypatch, tmp_path):
    """An hf:// file already in the Hugging Face cache loads offline, as on a GPU machine."""
    from huggingface_hub import constants

    from draft_lightning.rewards.weights import resolve_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--org--aesthetic" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--org--aesthetic" / "refs").mkdir()
    (tmp_path / "models--org--aesthetic" / "refs" / "main").write_text("0" * 40)
    target = snapshot / "aesthetic-model.pth"
    target.write_bytes(Path(tiny_path("tiny:aesthetic")).read_bytes())
    found = resolve_file("hf://org/aesthetic/aesthetic-model.pth", "AestheticReward.head")
    assert found.resolve() == target.resolve()


def test_clip_rewards_give_unit_image_embeddings_for_diversity(rewards):
    images = torch.rand(3, 3, 40, 48)
    for reward in rewards.values():
        features = reward.image_features(images)
        assert features.shape[0] == 3 and features.dtype == torch.float32
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(3), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(features[0], features[1])  # different images, different rows
    from draft_lightning.rewards import Brightness, WeightedSum

    mixed = WeightedSum([Brightness(), rewards["aesthetic"]])
    torch.testing.assert_close(
        mixed.image_features(images), rewards["aesthetic"].image_features(images)
    )
    assert Brightness().image_features(images) is None
