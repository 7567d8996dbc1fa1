"""PickScore: a CLIP ViT-H-14 fine-tuned on Pick-a-Pic human preferences (Kirstain et al., 2023).

Scored as the reference does: logit_scale.exp() * cos(image embedding, text embedding), with
the transformers CLIPModel `yuvalkirstain/PickScore_v1` and the processor of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (scores are around 20). Images go through
`ImageTransform.from_hf(processor.image_processor)` (differentiable); prompts through the
processor's own tokenizer (padding, truncation to 77 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from draft_lightning.errors import ConfigError, load_each
from draft_lightning.rewards.checkpointing import checkpoint_blocks
from draft_lightning.rewards.preprocess import ImageTransform
from draft_lightning.rewards.pretrained import DTypeName, PretrainedReward, check_batch
from draft_lightning.rewards.weights import resolve_folder

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
# Weights as safetensors if the repo has them, else PyTorch .bin (read weights-only).
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


class PickScoreReward(PretrainedReward):
    """Predicted preference of people for each image given its prompt; higher is better."""

    def __init__(
        self,
        model: str = PICKSCORE_MODEL,
        processor: str = PICKSCORE_PROCESSOR,
        dtype: DTypeName = "float32",
        gradient_checkpointing: bool = False,
        name: str = "pickscore",
    ) -> None:
        """
        Args:
            model: transformers CLIPModel: a Hugging Face repo id, a local folder
                (config.json + weights), or "tiny:pickscore".
            processor: Its CLIPProcessor (image preprocessing settings and tokenizer): a
                repo id, a local folder, or "tiny:pickscore".
            dtype: Storage and compute dtype of the frozen weights.
            gradient_checkpointing: Recompute each transformer layer of the image tower in
                the backward pass instead of storing its activations.
            name: Key of this reward in logged score parts.
        """
        super().__init__(name, dtype)
        from transformers import CLIPModel, CLIPProcessor

        model_dir, processor_dir = load_each(
            [
                lambda: resolve_folder(model, f"{self.what}.model", ["config.json"], _WEIGHTS),
                lambda: resolve_folder(
                    processor,
                    f"{self.what}.processor",
                    ["preprocessor_config.json|processor_config.json"],
                ),
            ]
        )
        try:
            self.model = CLIPModel.from_pretrained(model_dir)
            loaded = CLIPProcessor.from_pretrained(processor_dir)
        except (OSError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            message = f"{self.what}: cannot load {model!r} / {processor!r}: {first}"
            raise ConfigError(message) from None
        self.tokenizer = loaded.tokenizer
        self.transform = ImageTransform.from_hf(loaded.image_processor)
        if gradient_checkpointing:
            checkpoint_blocks(self.model.vision_model.encoder.layers)
        self.finish()

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels.to(self.weight_dtype)).pooler_output
        image = self.model.visual_projection(pooled).float()
        return image / image.norm(dim=-1, keepdim=True)

    def score_pixels(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores of already preprocessed model inputs (what `forward` does after `transform`)."""
        check_batch(pixels, prompts)
        image = self.embed_pixels(pixels)
        with torch.no_grad():
            tokens = self.tokenizer(
                list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt"
            ).to(pixels.device)
            text_pooled = self.model.text_model(**tokens).pooler_output
            text = self.model.text_projection(text_pooled).float()
        text = text / text.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.exp().float() * (image * text).sum(dim=-1)
