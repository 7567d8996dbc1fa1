"""LAION aesthetic predictor v2: a small MLP on the L2-normalised CLIP ViT-L/14 image embedding.

Supported head files: the published `sac+logos+ava1-l14-linearMSE.pth` (LAION's
improved-aesthetic-predictor) and the identical `aesthetic-model.pth` of the Hugging Face
repo trl-lib/ddpo-aesthetic-predictor (the default), or the same tensors as .safetensors.
Layout (a state dict of an nn.Sequential named `layers`):

    layers.0: Linear(768, 1024)   layers.1: Dropout(0.2)
    layers.2: Linear(1024, 128)   layers.3: Dropout(0.2)
    layers.4: Linear(128, 64)     layers.5: Dropout(0.1)
    layers.6: Linear(64, 16)      layers.7: Linear(16, 1)

There are no activations: the published head is affine. Its input is the OpenAI CLIP
ViT-L/14 image embedding (OpenCLIP "ViT-L-14" with the "openai" weights) divided by its norm;
scores are roughly 1-10.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from draft_lightning.errors import ConfigError, load_each
from draft_lightning.rewards.open_clip_loader import load_open_clip
from draft_lightning.rewards.pretrained import DTypeName, PretrainedReward
from draft_lightning.rewards.weights import load_tensors, resolve_file

AESTHETIC_HEAD = "hf://trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
_HIDDEN = (1024, 128, 64, 16)


def aesthetic_mlp(input_dim: int = 768) -> nn.Sequential:
    """The published head's layout; dropout layers keep the state-dict indices."""
    d1, d2, d3, d4 = _HIDDEN
    return nn.Sequential(
        nn.Linear(input_dim, d1),
        nn.Dropout(0.2),
        nn.Linear(d1, d2),
        nn.Dropout(0.2),
        nn.Linear(d2, d3),
        nn.Dropout(0.1),
        nn.Linear(d3, d4),
        nn.Linear(d4, 1),
    )


def load_aesthetic_mlp(source: str, what: str) -> nn.Sequential:
    """Read a head file (plain or `layers.`-prefixed state dict) into `aesthetic_mlp`."""
    path = resolve_file(source, what)
    state = load_tensors(path, what)
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    first = state.get("0.weight")
    if first is None or first.ndim != 2:
        raise ConfigError(f"{what}={source!r} ({path}) is not a LAION aesthetic MLP state dict")
    head = aesthetic_mlp(first.shape[1])
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(
            f"{what}={source!r} ({path}) does not fit the aesthetic MLP layout: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return head


class AestheticReward(PretrainedReward):
    """Predicted aesthetic rating of each image (prompts are ignored); higher is better."""

    def __init__(
        self,
        head: str = AESTHETIC_HEAD,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str = "openai",
        dtype: DTypeName = "float32",
        gradient_checkpointing: bool = False,
        name: str = "aesthetic",
    ) -> None:
        """
        Args:
            head: The MLP weights: a local .pth/.safetensors file (e.g.
                sac+logos+ava1-l14-linearMSE.pth), "hf://<org>/<repo>/<file>", or
                "tiny:aesthetic". Default: trl-lib/ddpo-aesthetic-predictor's copy.
            clip_model: OpenCLIP architecture of the embedding ("tiny:clip" for the
                stand-in).
            clip_pretrained: Its weights: an open_clip tag ("openai" is the CLIP the head was
                trained on), a local file, "hf://<org>/<repo>/<file>", or "tiny:clip".
            dtype: Storage and compute dtype of the frozen CLIP and MLP weights.
            gradient_checkpointing: Recompute each transformer block of the image tower in
                the backward pass instead of storing its activations.
            name: Key of this reward in logged score parts.
        """
        super().__init__(name, dtype)
        keys = ("clip_model", "clip_pretrained")
        clip, self.head = load_each(
            [
                lambda: load_open_clip(clip_model, clip_pretrained, self.what, keys=keys),
                lambda: load_aesthetic_mlp(head, f"{self.what}.head"),
            ]
        )
        self.visual: nn.Module = clip.model.visual  # the text tower is not needed
        self.transform = clip.transform
        embed_dim = self.visual.output_dim
        if self.head[0].in_features != embed_dim:
            raise ConfigError(
                f"{self.what}.head={head!r} takes {self.head[0].in_features}-d embeddings but "
                f"clip_model={clip_model!r} gives {embed_dim}-d ones"
            )
        self.visual.set_grad_checkpointing(gradient_checkpointing)
        self.finish()

    def score_pixels(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores of already preprocessed model inputs (what `forward` does after `transform`)."""
        embedding = self.embed_pixels(pixels)
        return self.head(embedding.to(self.weight_dtype)).squeeze(-1).float()

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels.to(self.weight_dtype)).float(), dim=-1)
