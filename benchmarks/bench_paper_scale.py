"""ESTIMATE of memory and time per step for SD 1.4 at 512 px on one 80 GB GPU (issue 8, item 6).

Why: no GPU is reachable here and no weights can be downloaded, yet a user needs to know
whether DRaFT-1, DRaFT-LV (n = 2) and full DRaFT fit and how fast they run. The real
architectures are built from their public configs on the meta device (no memory, no
weights) and one call of each is counted: parameters, FLOPs forward and backward
(torch.utils.flop_counter) and the activation bytes autograd saves. Attention is counted as
FlashAttention/SDPA on a GPU keeps it (q, k, v, output and a per-row logsumexp; the N x N
matrix is recomputed in backward). The step is then assembled from these per-call figures
exactly as our sampler runs it (checkpointed UNet calls and decode).

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.bench_paper_scale [--smoke]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Section, table

# CompVis/stable-diffusion-v1-4 unet/config.json (public).
SD14_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
# CompVis/stable-diffusion-v1-4 vae/config.json (public).
SD14_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# CLIP ViT-L/14: SD 1.4's text encoder and the LAION aesthetic reward's image tower.
CLIP_L14_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_L14_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}

DTYPE = torch.bfloat16  # frozen weights and activations (bf16-mixed), LoRA in float32
GPU_BYTES = 80e9
A100_BF16_PEAK = 312e12  # dense bf16 FLOP/s of an A100 80 GB
MFU = 0.40  # assumed sustained fraction of peak (stated, not measured)
STEPS = 50


class FlashLikeAttention(torch.autograd.Function):
    """Attention that saves what FlashAttention saves (q, k, v, out, fp32 logsumexp) and,
    in backward, does its work: recompute Q K^T, then dV, dP, dQ, dK (five N x M matmuls)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = F.scaled_dot_product_attention(q, k, v)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, _ = ctx.saved_tensors
        p = q @ k.transpose(-1, -2)  # recomputed scores / probabilities
        dv = p.transpose(-1, -2) @ grad
        dp = grad @ v.transpose(-1, -2)
        return dp @ k, dp.transpose(-1, -2) @ q, dv


class FlashLikeProcessor:
    """A diffusers attention processor for the UNet's transformer blocks using the above."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, tokens, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        q, k, v = (
            t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v)
        )
        out = FlashLikeAttention.apply(q, k, v).transpose(1, 2).reshape(batch, tokens, -1)
        return attn.to_out[1](attn.to_out[0](out))


@dataclass
class CallCost:
    """One call of one network at one batch size."""

    params: int
    forward_flops: int
    backward_flops: int
    activation_bytes: int
    block_peak_bytes: int = 0  # with per-block checkpointing: held + largest block


class SavedBytes:
    """Distinct bytes saved for backward while active, parameters (and views of them) excluded."""

    def __init__(self, module: nn.Module) -> None:
        self.param_ids = {id(p) for p in module.parameters()}
        self.seen: dict[int, int] = {}

    def pack(self, tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in self.param_ids and id(base) not in self.param_ids:
            self.seen[id(base)] = base.numel() * base.element_size()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def count(module: nn.Module, inputs: dict, backward: bool, fn=None) -> CallCost:
    """FLOPs and distinct activation bytes saved for backward (parameters excluded) of one
    call of `fn` (default: the module itself) on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    fn = fn if fn is not None else module
    saved = SavedBytes(module)
    with FlopCounterMode(display=False) as counter:
        with saved.hooks():
            out = fn(**inputs)
        out = out.sample if hasattr(out, "sample") else out
        forward = counter.get_total_flops()
        if backward:
            out.backward(torch.ones_like(out))
        total = counter.get_total_flops()
    params = sum(p.numel() for p in module.parameters())
    return CallCost(params, forward, total - forward, saved.total)


def block_peak(module, inputs: dict, fn=None) -> int:
    """Bytes a backward recompute holds with diffusers' per-block checkpointing: what the call
    saves outside its checkpointed blocks, the blocks' inputs (kept by their checkpoints) and
    the largest block's own activations (recomputed one block at a time)."""
    fn = fn if fn is not None else module
    outer = SavedBytes(module)
    held: dict[int, int] = {}
    largest = 0

    def checkpointed(block, *args):
        nonlocal largest
        for arg in args:
            if isinstance(arg, torch.Tensor):
                held[id(arg)] = arg.numel() * arg.element_size()
        inner = SavedBytes(module)
        with inner.hooks():  # a real checkpoint would discard these and recompute them later
            out = block(*args)
        largest = max(largest, inner.total)
        return out

    module.enable_gradient_checkpointing(gradient_checkpointing_func=checkpointed)
    try:
        with outer.hooks():
            fn(**inputs)
    finally:
        module.disable_gradient_checkpointing()
    return outer.total + sum(held.values()) + largest


def meta_tensor(*shape, grad: bool = False) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=DTYPE, requires_grad=grad)


def measure_calls(latent: int, image: int, lora_rank: int) -> dict[str, CallCost]:
    """Per-call costs of SD 1.4's parts at batch 1 (the UNet at batch 2: cond + uncond)."""
    import peft
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**SD14_UNET, "sample_size": latent}).to(DTYPE)
        vae = AutoencoderKL(**{**SD14_VAE, "sample_size": image}).to(DTYPE)
        text = CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT)).to(DTYPE)
        vision = CLIPVisionModel(CLIPVisionConfig(**CLIP_L14_VISION)).to(DTYPE)
    for frozen in (unet, vae, text, vision):
        frozen.requires_grad_(False)
    unet.set_attn_processor(FlashLikeProcessor())
    unet.add_adapter(
        peft.LoraConfig(
            r=lora_rank,
            lora_alpha=lora_rank,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    unet_in = {
        "sample": meta_tensor(2, 4, latent, latent, grad=True),
        "timestep": torch.tensor(500, device="meta"),
        "encoder_hidden_states": meta_tensor(2, 77, 768),
    }
    calls = {
        "unet": count(unet, unet_in, backward=True),
        "decode": count(
            vae, {"z": meta_tensor(1, 4, latent, latent, grad=True)}, True, fn=vae.decode
        ),
        "reward": count(
            vision,
            {"pixel_values": meta_tensor(1, 3, 224, 224, grad=True)},
            True,
            fn=lambda pixel_values: vision(pixel_values=pixel_values).pooler_output,
        ),
        "text": count(
            text,
            {"input_ids": torch.zeros(1, 77, dtype=torch.long, device="meta")},
            False,
            fn=lambda input_ids: text(input_ids=input_ids).last_hidden_state,
        ),
    }
    calls["unet"].params -= lora
    calls["unet"].block_peak_bytes = block_peak(unet, unet_in)
    decode_in = {"z": meta_tensor(1, 4, latent, latent, grad=True)}
    calls["decode"].block_peak_bytes = block_peak(vae, decode_in, fn=vae.decode)
    calls["lora"] = CallCost(lora, 0, 0, 0)
    return calls


@dataclass
class Estimate:
    name: str
    memory_bytes: float
    flops: float
    fits: bool


def estimate(
    calls: dict[str, CallCost],
    latent: int,
    batch: int,
    k: int,
    copies: int,
    ckpt: bool,
    blocks: bool = False,
) -> dict:
    """Peak memory and FLOPs of one step: T - k no-grad UNet calls, k differentiated ones
    (forward, recompute when checkpointed, backward), decode and reward on `copies` samples
    per prompt. DRaFT-LV (copies = n) samples the whole chain without gradient first.
    `blocks` is checkpoint_blocks=True: nested per-block checkpoints in each UNet call (one
    more forward per differentiated call) and per-block instead of whole-decode checkpoints."""
    unet, decode, reward, text = calls["unet"], calls["decode"], calls["reward"], calls["text"]
    lora = calls["lora"].params
    weight_bytes = 2 * (unet.params + decode.params + reward.params + text.params)
    lora_bytes = 4 * lora * 4  # fp32 weights, gradients, AdamW's two moments
    n = batch * copies  # samples decoded and scored
    inputs = 4 * 4 * latent**2 * n  # fp32 latent kept per checkpointed call
    unet_peak = (unet.block_peak_bytes if blocks else unet.activation_bytes) * n
    decode_peak = (decode.block_peak_bytes if blocks else decode.activation_bytes) * n
    if ckpt:
        # The decode's block inputs stay alive while the reward runs.
        decode_held = decode.block_peak_bytes if blocks else 0
        reward_peak = (reward.activation_bytes + decode_held) * n
        held = k * inputs + max(unet_peak, decode_peak, reward_peak)
    else:
        held = (
            k * unet.activation_bytes * n + (decode.activation_bytes + reward.activation_bytes) * n
        )
    no_grad_calls = STEPS if copies > 1 else STEPS - k
    flops = no_grad_calls * unet.forward_flops * batch
    forwards = (3 if blocks else 2) if ckpt else 1
    flops += k * (unet.forward_flops * forwards + unet.backward_flops) * n
    flops += decode.forward_flops * (2 if ckpt else 1) * n + decode.backward_flops * n
    flops += (reward.forward_flops + reward.backward_flops) * n + text.forward_flops * batch
    memory = weight_bytes + lora_bytes + held
    return {"memory": memory, "flops": flops, "fits": memory <= GPU_BYTES}


def run(smoke: bool = False) -> Section:
    latent, image = (8, 64) if smoke else (64, 512)
    calls = measure_calls(latent, image, lora_rank=8)
    throughput = A100_BF16_PEAK * MFU
    batch = 4  # the paper's small-run batch
    methods = {
        "DRaFT-1": (1, 1, True, False),
        "DRaFT-LV n=2": (1, 2, True, False),
        "full DRaFT (K=50), checkpointed": (STEPS, 1, True, False),
        "full DRaFT (K=50), no checkpointing": (STEPS, 1, False, False),
        "DRaFT-1, checkpoint_blocks": (1, 1, True, True),
        "DRaFT-LV n=2, checkpoint_blocks": (1, 2, True, True),
        "full DRaFT (K=50), checkpoint_blocks": (STEPS, 1, True, True),
    }
    rows = []
    results = {}
    for name, (k, copies, ckpt, blocks) in methods.items():
        e = estimate(calls, latent, batch, k, copies, ckpt, blocks)
        per_sample = estimate(calls, latent, 1, k, copies, ckpt, blocks)
        fixed = estimate(calls, latent, 0, k, copies, ckpt, blocks)["memory"]
        max_batch = int((GPU_BYTES - fixed) // max(per_sample["memory"] - fixed, 1))
        results[name] = {**e, "max_batch": max_batch}
        rows.append(
            [
                name,
                f"{e['memory'] / 1e9:.1f}",
                "yes" if e["fits"] else "NO",
                max_batch,
                f"{e['flops'] / 1e12:.0f}",
                f"{e['flops'] / throughput:.1f}",
            ]
        )
    d1 = results["DRaFT-1"]["flops"]
    calls_rows = [
        [
            name,
            f"{c.params / 1e6:.1f}",
            f"{c.forward_flops / 1e12:.3f}",
            f"{c.backward_flops / 1e12:.3f}" if c.backward_flops else "-",
            f"{c.activation_bytes / 1e9:.2f}" if c.activation_bytes else "-",
            f"{c.block_peak_bytes / 1e9:.2f}" if c.block_peak_bytes else "-",
        ]
        for name, c in calls.items()
    ]
    body = (
        "**ESTIMATE, not a measurement** (no GPU was available). Per-call figures counted"
        f" on the meta device from the public SD 1.4 configs at {image} px (latents"
        f" 4x{latent}x{latent}), bf16, LoRA rank 8 on to_q/k/v/out:\n\n"
    )
    body += table(
        [
            "call (batch)",
            "params M",
            "forward TFLOP",
            "backward TFLOP (input + LoRA grads)",
            "activations GB",
            "recompute peak with checkpoint_blocks GB",
        ],
        [[f"{r[0]} ({'2' if r[0] == 'unet' else '1'})", *r[1:]] for r in calls_rows],
    )
    body += f"\n\nOne training step, batch {batch} prompts, 50 DDIM steps, guidance 7.5:\n\n"
    body += table(
        [
            "method",
            "peak memory GB",
            "fits 80 GB",
            "largest batch that fits",
            "TFLOP / step",
            f"s / step on an A100 at {MFU:.0%} MFU",
        ],
        rows,
    )
    lv = results["DRaFT-LV n=2"]["flops"] / d1
    full = results["full DRaFT (K=50), checkpointed"]["flops"] / d1
    body += (
        f"\n\nCompute relative to DRaFT-1: DRaFT-LV n=2 {lv:.2f}x (the paper: about 1.1x),"
        f" full DRaFT {full:.2f}x. Peak memory = frozen weights (bf16: UNet, VAE, CLIP text,"
        " CLIP ViT-L/14 reward tower) + LoRA weights, gradients and AdamW state (fp32) + what"
        " a step holds at its peak: with checkpointing, one latent per differentiated step"
        " plus the largest single recompute (one UNet call on the batch, or the decode, or"
        " the reward); without it, every differentiated UNet call's activations at once."
        f" Time = FLOPs / ({MFU:.0%} of an A100's {A100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16);"
        " the MFU is an assumption: scale the column by 0.4 / your MFU (an H100 is about 2-3x"
        " faster). Allocator fragmentation, CUDA context (~0.5-1 GB) and the reward's own"
        " preprocessing are not included."
    )
    data = {"calls": {k: vars(v) for k, v in calls.items()}, "methods": results}
    return Section("6. Paper scale: SD 1.4 at 512 px on one 80 GB GPU (ESTIMATE)", "", body, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a 64 px model instead of 512")
    print(run(parser.parse_args().smoke).body)


if __name__ == "__main__":
    main()
