"""compile_unet (samplers/base.py): the denoiser calls made without gradient, and the
discarded forward of each differentiated call (samplers/recompute.py), run through
torch.compile (inductor, which needs a C compiler on the CPU). Same images and the same LoRA
gradient as eager, the LoRA unmerged after each step, and no recompiling after the first."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module


def same_adapter(source, target) -> None:
    with torch.no_grad():
        for mine, theirs in zip(
            target.trainable_parameters(), source.trainable_parameters(), strict=True
        ):
            mine.copy_(theirs)


@pytest.fixture(scope="module")
def pair(tiny_sd):
    from draft_lightning.estimators import DraftK

    compiled = make_module(estimator=DraftK(2), compile_unet=True)
    eager = make_module(estimator=DraftK(2))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-identity adapter, so merging it changes the weights
        for p in compiled.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    same_adapter(compiled, eager)
    return compiled, eager


def lora_layers(module) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in module.pipeline.denoiser.modules() if isinstance(m, LoraLayer)]


def test_training_steps_match_eager_and_compile_once(pair):
    from torch._dynamo.utils import counters

    compiled, eager = pair
    frozen = {
        n: p.detach().clone()
        for n, p in compiled.pipeline.denoiser.named_parameters()
        if not p.requires_grad
    }
    graphs_before = counters["stats"]["unique_graphs"]
    optimizers = [torch.optim.SGD(m.trainable_parameters(), lr=0.5) for m in pair]
    graphs = []
    for _ in range(2):  # the second step runs on an adapter the first one changed
        grads = []
        for module, optimizer in zip(pair, optimizers, strict=True):
            loss = module.training_step({"prompts": ["a cat", "a dog"]}, 0)
            loss.backward()
            grads.append([p.grad.clone() for p in module.trainable_parameters()])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert any(g.abs().max() > 0 for g in grads[1])
        for got, want in zip(*grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-7)
        # After the step the LoRA is unmerged and the frozen weights are the original ones.
        assert not any(layer.merged for layer in lora_layers(compiled))
        for name, param in compiled.pipeline.denoiser.named_parameters():
            if name in frozen:
                assert torch.equal(param, frozen[name]), name
        graphs.append(counters["stats"]["unique_graphs"] - graphs_before)
    # Two graphs: the no-grad steps with the LoRA merged, and the discarded forward of the
    # differentiated calls (samplers/recompute.py) with it unmerged. The updated adapter
    # reaches both as inputs: the second step compiles nothing.
    assert graphs == [2, 2]


def test_sampled_images_match_eager(pair):
    compiled, eager = pair
    images = compiled.generate(["a cat", "a dog"], [1, 2])
    torch.testing.assert_close(
        images, eager.generate(["a cat", "a dog"], [1, 2]), atol=1e-4, rtol=0
    )


def test_flux_full_draft_gradient_matches_eager_with_the_compiled_forward(tiny_sd):
    """FLUX.1 (a transformer, one call per step, no unconditional half): every call of full
    DRaFT takes the compiled forward and the eager recompute; the LoRA gradient is eager's."""
    from flow_reference import perturb_lora

    from draft_lightning.estimators import Draft
    from draft_lightning.samplers.settings import SamplingSettings

    grads = []
    for compile_unet in (True, False):
        torch.manual_seed(0)  # the same LoRA A initialisation for both
        module = make_module(
            pretrained_model="tiny:flux",
            estimator=Draft(),
            sampling=SamplingSettings(num_steps=2, guidance_scale=3.5, resolution=32),
            compile_unet=compile_unet,
        )
        perturb_lora(module)
        module.training_step({"prompts": ["a cat", "a dog"]}, 0).backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.trainable_parameters()]))
    compiled, eager = grads
    assert eager.abs().max() > 0
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-5 * float(eager.abs().max()))
