"""CLIP score: cosine between an image's and its prompt's OpenCLIP embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from draft_lightning.rewards.open_clip_loader import load_open_clip
from draft_lightning.rewards.pretrained import DTypeName, PretrainedReward, check_batch


class OpenClipCosine(PretrainedReward):
    """cos(image embedding, text embedding) per image with an OpenCLIP model.

    Gradient flows through the image tower only; prompts are encoded without autograd.
    """

    def load(
        self,
        model: str,
        pretrained: str,
        gradient_checkpointing: bool,
        keys: tuple[str, str] = ("model", "pretrained"),
        **preprocess: str,
    ) -> None:
        loaded = load_open_clip(model, pretrained, self.what, preprocess, keys)
        self.model: nn.Module = loaded.model
        self.tokenizer = loaded.tokenizer
        self.transform = loaded.transform
        # open_clip checkpoints each residual block whenever the flag is set (train or eval).
        self.model.set_grad_checkpointing(gradient_checkpointing)
        self.finish()

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.weight_dtype), normalize=True).float()

    def score_pixels(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores of already preprocessed model inputs (what `forward` does after `transform`)."""
        check_batch(pixels, prompts)
        image = self.embed_pixels(pixels)
        with torch.no_grad():
            tokens = self.tokenizer(list(prompts)).to(pixels.device)
            text = self.model.encode_text(tokens, normalize=True)
        return (image.float() * text.float()).sum(dim=-1)


class CLIPScoreReward(OpenClipCosine):
    """Image-prompt cosine similarity under any OpenCLIP model.

    CLIPScore without its 2.5 * max(cos, 0) rescaling, whose clamp would zero the gradient
    of poor images."""

    def __init__(
        self,
        model: str = "ViT-L-14",
        pretrained: str = "openai",
        dtype: DTypeName = "float32",
        gradient_checkpointing: bool = False,
        name: str = "clip_score",
    ) -> None:
        """
        Args:
            model: OpenCLIP architecture name (open_clip.list_models()), or "tiny:clip".
            pretrained: Weights: an open_clip pretrained tag of `model` (e.g. "openai",
                "laion2b_s32b_b79k"), a local file, "hf://<org>/<repo>/<file>", or
                "tiny:clip". Tags fetch from the Hugging Face Hub (cache first).
            dtype: Storage and compute dtype of the frozen CLIP weights.
            gradient_checkpointing: Recompute each transformer block of the image tower in
                the backward pass instead of storing its activations.
            name: Key of this reward in logged score parts.
        """
        super().__init__(name, dtype)
        self.load(model, pretrained, gradient_checkpointing)
