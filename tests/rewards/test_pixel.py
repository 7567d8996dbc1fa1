"""Fast checks of the weight-free rewards and WeightedSum against independent computations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.rewards import (
    Brightness,
    Colorfulness,
    JPEGCompressibility,
    Reward,
    WeightedSum,
)
from draft_lightning.rewards.pixel import JPEG_LUMA_Q50, dct_matrix, jpeg_quant_table


def _prompts(n: int) -> list[str]:
    return [f"prompt {i}" for i in range(n)]


def _const(rgb: tuple[float, float, float], h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, h, w).clone()


def _checker(a: tuple[float, float, float], b: tuple[float, float, float], size: int = 16):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((yy + xx) % 2 == 0).float()[None, None]
    return mask * torch.tensor(a).view(1, 3, 1, 1) + (1 - mask) * torch.tensor(b).view(1, 3, 1, 1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Tiny(Reward):
    """A reward with a trainable-looking layer and dropout, to show freeze()/train() behaviour."""

    def __init__(self, name: str = "tiny") -> None:
        super().__init__(name)
        self.linear = nn.Linear(3, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.linear(self.dropout(images.mean(dim=(2, 3)))).squeeze(-1)


class Counting(Reward):
    """Wraps a reward and counts forward calls."""

    def __init__(self, inner: Reward) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.calls = 0

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        return self.inner(images, prompts)


# --- Brightness -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rgb", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.2, 0.7, 0.4)]
)
def test_brightness_of_constant_image_is_luma(rgb):
    r, g, b = rgb
    got = Brightness()(_const(rgb), _prompts(1))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(0.299 * r + 0.587 * g + 0.114 * b, abs=1e-6)


def test_brightness_is_per_image_mean():
    x = torch.rand(3, 3, 8, 12, generator=_gen())
    want = torch.stack([(0.299 * im[0] + 0.587 * im[1] + 0.114 * im[2]).mean() for im in x])
    torch.testing.assert_close(Brightness()(x, _prompts(3)), want)


# --- Colorfulness -----------------------------------------------------------------------------


def _hasler_255(image: torch.Tensor) -> float:
    """Textbook colourfulness on a 0-255 image, one image at a time, then rescaled to [0, 1]."""
    r, g, b = (image.double() * 255).unbind(0)
    rg = (r - g).flatten()
    yb = (0.5 * (r + g) - b).flatten()
    std_root = math.sqrt(rg.std(unbiased=False).item() ** 2 + yb.std(unbiased=False).item() ** 2)
    mean_root = math.sqrt(rg.mean().item() ** 2 + yb.mean().item() ** 2)
    return (std_root + 0.3 * mean_root) / 255.0


def test_colorfulness_of_grey_is_zero():
    got = Colorfulness()(torch.cat([_const((0.5,) * 3), _const((0.9,) * 3)]), _prompts(2))
    assert got.abs().max().item() < 1e-5


def test_colorfulness_matches_textbook_formula():
    x = torch.rand(4, 3, 10, 14, generator=_gen(1))
    x[1] *= torch.tensor([1.0, 0.2, 0.2]).view(3, 1, 1)  # a reddish one: non-zero mean term
    want = torch.tensor([_hasler_255(im) for im in x])
    torch.testing.assert_close(Colorfulness()(x, _prompts(4)), want, atol=1e-5, rtol=1e-5)


def test_colorfulness_prefers_saturated():
    vivid = _checker((1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    grey = Brightness()(vivid, _prompts(1)).view(1, 1, 1, 1)
    dull = 0.3 * vivid + 0.7 * grey
    scores = Colorfulness()(torch.cat([vivid, dull]), _prompts(2))
    assert scores[0] > scores[1] > 0


# --- JPEG compressibility ---------------------------------------------------------------------


def test_dct_is_orthonormal():
    d = dct_matrix(8, dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64))
    block = torch.full((8, 8), 3.0, dtype=torch.float64)
    coeffs = d @ block @ d.T
    assert coeffs[0, 0].item() == pytest.approx(24.0)  # DC of a flat block = 8 * value
    assert coeffs.flatten()[1:].abs().max().item() < 1e-12


def test_quant_table_scaling():
    torch.testing.assert_close(jpeg_quant_table(50), torch.tensor(JPEG_LUMA_Q50).float())
    assert jpeg_quant_table(100).eq(1).all()
    assert jpeg_quant_table(10)[0].tolist() == [80, 55, 50, 80, 120, 200, 255, 255]
    assert jpeg_quant_table(90)[0].tolist() == [3, 2, 2, 3, 5, 8, 10, 12]
    assert jpeg_quant_table(25)[0].tolist() == [32, 22, 20, 32, 48, 80, 102, 122]
    assert jpeg_quant_table(1).eq(255).all()


@pytest.mark.parametrize("quality", [0, 101, -5, 50.5, True])
def test_jpeg_quality_validation(quality):
    with pytest.raises(ConfigError, match=r"quality=.*: must be an integer in 1\.\.100") as err:
        JPEGCompressibility(quality=quality)
    assert repr(quality) in str(err.value)
    assert "\n" not in str(err.value)


def _naive_bits(image: torch.Tensor, q: torch.Tensor) -> float:
    """Block-by-block bit estimate from the DCT-II double-sum formula (H, W multiples of 8)."""
    y = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).double() * 255 - 128
    n = torch.arange(8, dtype=torch.float64)
    total, prev_dc, count = 0.0, 0.0, 0
    for by in range(0, y.shape[0], 8):
        for bx in range(0, y.shape[1], 8):
            block = y[by : by + 8, bx : bx + 8]
            for u in range(8):
                for v in range(8):
                    cu = math.sqrt(1 / 8) if u == 0 else math.sqrt(2 / 8)
                    cv = math.sqrt(1 / 8) if v == 0 else math.sqrt(2 / 8)
                    basis = torch.outer(
                        torch.cos((2 * n + 1) * u * math.pi / 16),
                        torch.cos((2 * n + 1) * v * math.pi / 16),
                    )
                    c = cu * cv * (block * basis).sum().item()
                    if u == 0 and v == 0:
                        c, prev_dc = c - prev_dc, c
                    total += math.log2(1 + abs(c / q[u, v].item()))
            count += 1
    return total / count


@pytest.mark.parametrize("quality", [50, 85])
def test_jpeg_matches_naive_blockwise_estimate(quality):
    x = torch.rand(2, 3, 16, 24, generator=_gen(2))
    x[1] = torch.linspace(0, 1, 24).expand(3, 16, 24)
    reward = JPEGCompressibility(quality=quality)
    q = jpeg_quant_table(quality)
    want = torch.tensor([-_naive_bits(im, q) for im in x])
    torch.testing.assert_close(reward(x, _prompts(2)), want, atol=1e-3, rtol=1e-4)


def test_jpeg_prefers_smooth_and_flat():
    size = 32
    ramp = torch.linspace(0, 1, size)
    smooth = (ramp[None, :] * 0.5 + ramp[:, None] * 0.5).expand(1, 3, size, size)
    noise = torch.rand(1, 3, size, size, generator=_gen(3))
    checker = _checker((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), size)
    flats = [_const((v, v, v), size, size) for v in (0.0, 0.5, 1.0)]
    batch = torch.cat([smooth, noise, checker, *flats])
    scores = JPEGCompressibility()(batch, _prompts(len(batch)))
    assert scores[0] > scores[1]  # smooth beats noise
    assert scores[0] > scores[2]  # smooth beats a pixel checkerboard
    assert scores[3:].min() >= scores[:3].max()  # any flat image beats every textured one


def test_jpeg_lower_quality_costs_fewer_bits():
    x = torch.rand(1, 3, 16, 16, generator=_gen(4))
    low = JPEGCompressibility(quality=20)(x, _prompts(1))
    high = JPEGCompressibility(quality=95)(x, _prompts(1))
    assert low > high


def test_jpeg_pads_odd_sizes_and_every_pixel_gets_gradient():
    for h, w in [(13, 21), (3, 5)]:
        x = torch.rand(1, 3, h, w, generator=_gen(5), requires_grad=True)
        JPEGCompressibility()(x, _prompts(1)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert (x.grad.abs().sum(dim=1) > 0).all()


# --- Shared behaviour -------------------------------------------------------------------------

PIXEL_REWARDS = [Brightness, Colorfulness, JPEGCompressibility]


@pytest.mark.parametrize("cls", PIXEL_REWARDS)
@pytest.mark.parametrize("flat", [False, True])
def test_gradients_reach_pixels_and_are_finite(cls, flat):
    x = _const((0.4, 0.4, 0.4)) if flat else torch.rand(2, 3, 16, 16, generator=_gen(6))
    x.requires_grad_(True)
    cls()(x, _prompts(len(x))).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if not flat:
        assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", PIXEL_REWARDS)
def test_gradients_match_finite_differences(cls):
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=_gen(14), requires_grad=True)
    reward = cls().to(torch.float64)
    fast = cls is JPEGCompressibility  # full Jacobian of the DCT path takes seconds
    assert torch.autograd.gradcheck(lambda im: reward(im, _prompts(2)), (x,), fast_mode=fast)


@pytest.mark.parametrize("cls", PIXEL_REWARDS)
def test_bfloat16_input_gives_float32_scores(cls):
    x = torch.rand(2, 3, 16, 16, generator=_gen(7)).bfloat16()
    reward = cls()
    got = reward(x, _prompts(2))
    assert got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(got, reward(x.float(), _prompts(2)))


@pytest.mark.parametrize("cls", PIXEL_REWARDS)
def test_default_names_and_override(cls):
    default = {
        Brightness: "brightness",
        Colorfulness: "colorfulness",
        JPEGCompressibility: "jpeg_compressibility",
    }
    assert cls().name == default[cls]
    assert cls(name="custom").name == "custom"


@pytest.mark.parametrize("cls", PIXEL_REWARDS)
def test_rejects_wrong_image_shape(cls):
    with pytest.raises(ValueError, match="B, 3, H, W"):
        cls()(torch.rand(2, 1, 8, 8), _prompts(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", PIXEL_REWARDS)
def test_runs_on_cuda(cls):
    x = torch.rand(2, 3, 16, 16, generator=_gen(8))
    reward = cls()
    torch.testing.assert_close(
        reward.cuda()(x.cuda(), _prompts(2)).cpu(), reward.cpu()(x, _prompts(2))
    )


# --- WeightedSum ------------------------------------------------------------------------------


def test_weighted_sum_total_and_parts():
    x = torch.rand(3, 3, 16, 16, generator=_gen(9))
    p = _prompts(3)
    b, c, j = Brightness(), Colorfulness(), JPEGCompressibility()
    ws = WeightedSum([b, c, j], weights=[2.0, -0.5, 0.01])
    want = 2.0 * b(x, p) - 0.5 * c(x, p) + 0.01 * j(x, p)
    torch.testing.assert_close(ws(x, p), want)
    total, parts = ws.score(x, p)
    torch.testing.assert_close(total, want)
    assert list(parts) == ["brightness", "colorfulness", "jpeg_compressibility"]
    torch.testing.assert_close(parts["brightness"], b(x, p))
    torch.testing.assert_close(parts["colorfulness"], c(x, p))
    torch.testing.assert_close(parts["jpeg_compressibility"], j(x, p))


def test_weighted_sum_default_weights_are_one():
    x = torch.rand(2, 3, 8, 8, generator=_gen(10))
    ws = WeightedSum([Brightness(), Colorfulness()])
    assert ws.weights == [1.0, 1.0] and ws.name == "total"
    torch.testing.assert_close(ws(x, _prompts(2)), Brightness()(x, []) + Colorfulness()(x, []))


def test_score_runs_each_sub_reward_once():
    x = torch.rand(2, 3, 8, 8, generator=_gen(11))
    a, b, c = Counting(Brightness()), Counting(Colorfulness()), Counting(JPEGCompressibility())
    ws = WeightedSum([WeightedSum([a, b], weights=[1.0, 3.0], name="inner"), c], weights=[2.0, 1.0])
    total, parts = ws.score(x, _prompts(2))
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)
    assert list(parts) == ["brightness", "colorfulness", "jpeg_compressibility"]
    assert ws.part_names == list(parts)
    want = 2.0 * (parts["brightness"] + 3.0 * parts["colorfulness"]) + parts["jpeg_compressibility"]
    torch.testing.assert_close(total, want)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"rewards": []}, r"rewards=\[\]: needs at least one"),
        (
            {"rewards": [Brightness()], "weights": [1.0, 2.0]},
            r"weights=\[1\.0, 2\.0\]: 2 weights for 1",
        ),
        (
            {"rewards": [Brightness()], "weights": [float("nan")]},
            r"weights=\[nan\]: each weight must be finite",
        ),
        (
            {"rewards": [Brightness(), Tiny()], "weights": [1.0, float("inf")]},
            r"weights=\[1\.0, inf\]: each weight must be finite",
        ),
        ({"rewards": [Brightness(), Brightness()]}, r"duplicates \['brightness'\]"),
        (
            {"rewards": [WeightedSum([Tiny(), Brightness()], name="a"), Brightness(name="tiny")]},
            r"duplicates \['tiny'\]",
        ),
    ],
)
def test_weighted_sum_validation(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        WeightedSum(**kwargs)
    assert "\n" not in str(err.value)


def test_weighted_sum_to_dtype_reaches_children():
    tiny, jpeg = Tiny(), JPEGCompressibility()
    ws = WeightedSum([WeightedSum([tiny], name="inner"), jpeg])
    ws.to(torch.float64)
    assert tiny.linear.weight.dtype == torch.float64
    assert jpeg.dct.dtype == torch.float64
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=_gen(12))
    assert ws(x, _prompts(2)).dtype == torch.float64


def test_freeze_and_train_keep_rewards_frozen():
    tiny = Tiny()
    ws = WeightedSum([WeightedSum([tiny], name="inner"), Brightness()])
    assert any(p.requires_grad for p in ws.parameters())
    assert ws.freeze() is ws
    assert not any(p.requires_grad for p in ws.parameters())
    ws.train()
    assert not any(m.training for m in ws.modules())
    x = torch.rand(2, 3, 8, 8, generator=_gen(13))
    torch.testing.assert_close(ws(x, _prompts(2)), ws(x, _prompts(2)))  # dropout is off
    tiny.train(True)
    assert not tiny.training
