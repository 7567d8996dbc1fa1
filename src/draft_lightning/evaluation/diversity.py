"""`val/diversity`: how different the images for one prompt are from each other.

Reward fine-tuning collapses towards a few high-reward images; the first sign is that the
seeds of one prompt stop producing different pictures. The metric is the mean pairwise
distance between the images of each prompt (cosine distance of a reward model's image
embeddings where the reward has one (CLIP rewards, the toy classifier), else
root-mean-square pixel distance), averaged over
prompts. 0 means every seed gave the same image.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torchmetrics import Metric


def prompt_ids(prompts: Sequence[str]) -> torch.Tensor:
    """Stable integer ids for prompts, so groups survive a cross-rank gather of tensors."""
    return torch.tensor([zlib.crc32(p.encode("utf-8")) for p in prompts], dtype=torch.int64)


def mean_pairwise_distance(features: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Mean distance over all unordered pairs of rows (requires at least two rows)."""
    if cosine:
        unit = torch.nn.functional.normalize(features.float(), dim=1)
        distances = 1 - unit @ unit.T
    else:
        flat = features.float().flatten(1)
        distances = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    n = features.shape[0]
    upper = torch.triu_indices(n, n, offset=1)
    return distances[upper[0], upper[1]].clamp_min(0).mean()


class PromptDiversity(Metric):
    """Mean over prompts of the mean pairwise distance among that prompt's samples; synced
    across ranks by concatenation. Prompts with a single sample are ignored unless no prompt
    has two, in which case all samples form one group.

    Args:
        cosine: features are embeddings (cosine distance) rather than pixels (RMS distance).
    """

    full_state_update = False

    def __init__(self, cosine: bool = False) -> None:
        super().__init__()
        self.cosine = cosine
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")
        # The per-prompt values of the last compute (every rank's), whose spread over the
        # prompts is the metric's noise; None when no prompt had two samples.
        self.group_values: torch.Tensor | None = None

    def update(self, features: torch.Tensor, groups: torch.Tensor) -> None:
        self.features.append(features.detach().float())
        self.groups.append(groups.to(features.device))

    def compute(self) -> torch.Tensor:
        features = torch.cat(self.features) if isinstance(self.features, list) else self.features
        groups = torch.cat(self.groups) if isinstance(self.groups, list) else self.groups
        per_group = [
            mean_pairwise_distance(features[groups == g], self.cosine)
            for g in groups.unique()
            if int((groups == g).sum()) >= 2
        ]
        self.group_values = torch.stack(per_group).detach().cpu() if per_group else None
        if per_group:
            return torch.stack(per_group).mean()
        if features.shape[0] >= 2:
            return mean_pairwise_distance(features, self.cosine)
        return torch.zeros((), device=features.device)
