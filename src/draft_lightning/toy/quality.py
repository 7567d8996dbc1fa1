"""How well the pretrained toy model draws what its captions say, judged by the classifier.

Images are generated with the project's own sampler (`DraftModule.generate`: DDIM with
classifier-free guidance), so the figures describe exactly the model that fine-tuning
starts from. Agreement is the fraction of images whose classified attribute equals the
caption's; "all" requires every attribute to agree. Chance is 1 / number of values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from draft_lightning.toy import world
from draft_lightning.toy.classifier import ToyClassifier
from draft_lightning.toy.data import HELD_OUT_SEED


def evaluation_captions(num_images: int, seed: int = HELD_OUT_SEED) -> list[str]:
    """Captions of held-out world samples: every attribute value about equally often."""
    return [s.caption for s in world.scenes(seed, range(num_images))]


@torch.no_grad()
def caption_agreement(
    classifier: ToyClassifier, images: torch.Tensor, captions: Sequence[str]
) -> dict[str, float]:
    """Per attribute (and "all"), the fraction of images classified as their caption says."""
    stated = [world.parse_caption(c) for c in captions]
    if any(s is None or len(s) < len(world.ATTRIBUTES) for s in stated):
        raise ValueError("every caption must be a toy world caption stating every attribute")
    logits = classifier(images.float())
    hits = torch.stack(
        [
            logits[name].argmax(dim=1)
            == torch.tensor([classifier.attributes[name].index(s[name]) for s in stated])
            for name in classifier.attributes
        ]
    )
    return {
        **{name: hits[i].float().mean().item() for i, name in enumerate(classifier.attributes)},
        "all": hits.all(dim=0).float().mean().item(),
    }


def chance_agreement() -> dict[str, float]:
    return {name: 1.0 / len(values) for name, values in world.ATTRIBUTES.items()}


def generate(
    folder: str | Path,
    classifier_folder: str | Path,
    captions: Sequence[str],
    guidance_scale: float,
    num_steps: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Images [N, 3, 32, 32] in [0, 1] for the captions (seed i for caption i), sampled
    through DraftModule exactly as fine-tuning and validation sample."""
    from draft_lightning.module import DraftModule
    from draft_lightning.samplers.settings import SamplingSettings
    from draft_lightning.toy.rewards import ToyAttributeReward

    module = DraftModule(
        reward=ToyAttributeReward(classifier=str(classifier_folder)),
        pretrained_model=str(folder),
        sampling=SamplingSettings(
            num_steps=num_steps, guidance_scale=guidance_scale, resolution=world.IMAGE_SIZE
        ),
    ).eval()
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        out.append(module.generate(chunk, list(range(start, start + len(chunk)))))
    return torch.cat(out)


def generation_quality(
    folder: str | Path,
    classifier: ToyClassifier,
    classifier_folder: str | Path,
    num_images: int = 256,
    guidance_scales: Sequence[float] = (1.0, 3.0, 5.0),
    num_steps: int = 20,
    grid: str | Path | None = None,
) -> dict:
    """Caption agreement of generated images at each guidance scale (and a grid of the first
    64 images at the middle scale, 4x enlarged, if `grid` names a .png file; their captions
    are `evaluation_captions(64)`)."""
    captions = evaluation_captions(num_images)
    shown = guidance_scales[len(guidance_scales) // 2]
    report: dict = {
        "num_images": num_images,
        "num_steps": num_steps,
        "chance": chance_agreement(),
        "by_guidance": {},
        "grid_guidance": float(shown),
    }
    for scale in guidance_scales:
        images = generate(folder, classifier_folder, captions, scale, num_steps)
        report["by_guidance"][str(float(scale))] = caption_agreement(classifier, images, captions)
        if scale == shown:
            grid_images = images
    if grid is not None:
        from torch.nn.functional import interpolate
        from torchvision.utils import save_image

        save_image(interpolate(grid_images[:64], scale_factor=4), str(grid), nrow=8, padding=2)
    report["unsaid_guidance"] = float(shown)
    report["unsaid"] = {}
    for attribute in world.OPTIONAL_ATTRIBUTES:
        unsaid = [world.leave_unsaid(c, [attribute]) for c in captions[: num_images // 2]]
        images = generate(folder, classifier_folder, unsaid, shown, num_steps)
        report["unsaid"][attribute] = unsaid_attribute_report(classifier, images, unsaid, attribute)
    return report


@torch.no_grad()
def unsaid_attribute_report(
    classifier: ToyClassifier, images: torch.Tensor, captions: Sequence[str], attribute: str
) -> dict:
    """For images whose captions leave `attribute` unsaid: how often the classifier reads each
    of its values (a model that learnt the world draws them all), and the agreement of the
    attributes the captions do state."""
    logits = classifier(images.float())
    read = logits[attribute].argmax(dim=1)
    values = classifier.attributes[attribute]
    stated = [world.parse_caption(c) for c in captions]
    others = [name for name in classifier.attributes if name != attribute]
    hits = torch.stack(
        [
            logits[name].argmax(dim=1)
            == torch.tensor([classifier.attributes[name].index(s[name]) for s in stated])
            for name in others
        ]
    )
    return {
        "drawn": {value: (read == i).float().mean().item() for i, value in enumerate(values)},
        "stated_agreement": hits.all(dim=0).float().mean().item(),
    }
