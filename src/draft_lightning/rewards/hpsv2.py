"""HPSv2 / HPSv2.1: human preference score, an OpenCLIP ViT-H-14 fine-tuned on HPDv2.

Scored as the reference scorer (hpsv2.img_score) does: the diagonal of
image_features @ text_features.T with both L2-normalised, i.e. a plain cosine with no logit
scale, on images resized so the LONG side is 224 px and padded with black to a square
(its `resize_longest_max=True` inference transform). For square SD images this equals a
plain resize to 224 x 224.
"""

from __future__ import annotations

from typing import Literal

from draft_lightning.errors import ConfigError
from draft_lightning.rewards.clip_score import OpenClipCosine
from draft_lightning.rewards.pretrained import DTypeName

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


class HPSv2Reward(OpenClipCosine):
    """Human Preference Score v2 (Wu et al., 2023): higher = preferred by people."""

    def __init__(
        self,
        version: Literal["v2.0", "v2.1"] = "v2.1",
        checkpoint: str | None = None,
        clip_model: str = "ViT-H-14",
        dtype: DTypeName = "float32",
        gradient_checkpointing: bool = False,
        name: str = "hpsv2",
    ) -> None:
        """
        Args:
            version: Which published checkpoint to fetch when `checkpoint` is not given:
                "v2.0" (HPS_v2_compressed.pt) or "v2.1" (HPS_v2.1_compressed.pt), both from
                the Hugging Face repo xswu/HPSv2.
            checkpoint: The HPS checkpoint instead: a local file, "hf://<org>/<repo>/<file>",
                or "tiny:hpsv2". A torch file holding {"state_dict": ...}, loaded with
                torch.load(weights_only=True).
            clip_model: OpenCLIP architecture the checkpoint fits ("tiny:clip" for the
                stand-in).
            dtype: Storage and compute dtype of the frozen weights.
            gradient_checkpointing: Recompute each transformer block of the image tower in
                the backward pass instead of storing its activations.
            name: Key of this reward in logged score parts.
        """
        super().__init__(name, dtype)
        if version not in HPS_FILES:
            choices = ", ".join(HPS_FILES)
            raise ConfigError(f"HPSv2Reward.version={version!r} must be one of {choices}")
        self.version = version
        source = checkpoint or f"hf://{HPS_REPO}/{HPS_FILES[version]}"
        keys = ("clip_model", "checkpoint")
        self.load(clip_model, source, gradient_checkpointing, keys, resize_mode="longest")

    def extra_repr(self) -> str:
        return f"version={self.version!r}"
