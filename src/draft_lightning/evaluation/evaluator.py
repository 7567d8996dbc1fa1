"""Validation and test scores: every sample of every rank, the mean rewards, the held-out
rewards, diversity, per-category rewards, their noise (standard errors), and the samples
themselves (thumbnails) for image grids.

The module logs what `compute` returns; this file knows nothing of Lightning.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from draft_lightning.errors import ConfigError
from draft_lightning.evaluation.diversity import PromptDiversity, prompt_ids


class Evaluator(nn.Module):
    """Accumulates one evaluation (validation or test) and summarises it.

    Args:
        reward_names: the reward's part names (`val/reward/<name>`).
        category_field: a prompt metadata field whose values group the rewards.
        heldout_names: the held-out rewards' names (`val/heldout/<name>`).
    """

    def __init__(
        self,
        reward_names: list[str],
        category_field: str | None = None,
        heldout_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        # torchmetrics averages over every sample of every rank. A non-finite score makes
        # the mean non-finite (torchmetrics would drop it with a warning by default, and the
        # mean of the rest would pass for the evaluation's); the training reward's are counted
        # in `nonfinite`.
        names = [
            "reward",
            *(f"reward/{n}" for n in reward_names),
            *(f"heldout/{n}" for n in heldout_names or []),
        ]
        self.metrics = nn.ModuleDict({n: MeanMetric(nan_strategy="disable") for n in names})
        self.nonfinite = SumMetric()
        self.diversity = PromptDiversity()
        self.category_field = category_field
        self.samples: list[dict] = []  # this evaluation's thumbnails and scores

    def update(
        self,
        batch: dict,
        images: torch.Tensor,
        reward: torch.Tensor,
        parts: dict[str, torch.Tensor],
        features: torch.Tensor | None,
        heldout: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add one batch of generated images, their scores and held-out scores."""
        heldout = {f"heldout/{name}": scores for name, scores in (heldout or {}).items()}
        self.metrics["reward"].update(reward)
        self.nonfinite.update((~torch.isfinite(reward.detach())).sum().float())
        for name, scores in parts.items():
            self.metrics[f"reward/{name}"].update(scores)
        for tag, scores in heldout.items():
            self.metrics[tag].update(scores)
        self.diversity.cosine = features is not None
        if features is None:  # pixels, at a fixed small size so any resolution compares
            features = torch.nn.functional.interpolate(images.float(), size=(32, 32), mode="area")
        self.diversity.update(features.flatten(1), prompt_ids(batch["prompts"]).to(images.device))
        self.samples.append(
            {
                "prompts": list(batch["prompts"]),
                "seeds": [int(s) for s in batch["seeds"]],
                "categories": self.categories(batch),
                "thumbnails": thumbnails(images),
                "scores": {"reward": reward.float().cpu()}
                | {name: v.float().cpu() for name, v in parts.items()}
                | {tag: v.float().cpu() for tag, v in heldout.items()},
            }
        )

    def compute(self, stage: str, world_size: int) -> tuple[dict[str, torch.Tensor], dict]:
        """(`<stage>/...` means, every rank's de-duplicated samples) of this evaluation; then
        resets for the next one. Every rank must call it (it gathers). The samples carry
        `standard_errors`: each mean's noise over the validation prompts and seeds."""
        values = {f"{stage}/{k}": m.compute() for k, m in self.metrics.items()}
        values[f"{stage}/diversity"] = self.diversity.compute()
        values[f"{stage}/nonfinite"] = self.nonfinite.compute()  # samples, over all ranks
        diversity_error = standard_error(self.diversity.group_values)
        for metric in [*self.metrics.values(), self.diversity, self.nonfinite]:
            metric.reset()
        samples = gather_samples(self.samples, world_size)
        self.samples = []
        samples["standard_errors"] = {
            f"{stage}/{name}": standard_error(torch.tensor([s[name] for s in samples["scores"]]))
            for name in (samples["scores"][0] if samples["scores"] else {})
            if name == "reward" or name.startswith("heldout/")
        } | {f"{stage}/diversity": diversity_error}
        device = values[f"{stage}/reward"].device
        return values | self.category_means(stage, samples, device), samples

    def categories(self, batch: dict) -> list[str] | None:
        """Each sample's value of `category_field`, from the prompts' metadata."""
        if self.category_field is None:
            return None
        metadata = batch.get("metadata")
        if metadata is None:
            raise ConfigError(
                f"category_field={self.category_field!r} needs prompt metadata: add it to "
                "data.metadata_fields"
            )
        return [str(m.get(self.category_field)) for m in metadata]

    def category_means(
        self, stage: str, samples: dict, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Mean reward per category over every rank's (de-duplicated) samples."""
        if self.category_field is None:
            return {}
        groups: dict[str, list[float]] = {}
        for category, scores in zip(samples["categories"], samples["scores"], strict=True):
            groups.setdefault(category, []).append(scores["reward"])
        prefix = f"{stage}/reward_by_{self.category_field}"
        return {
            f"{prefix}/{category}": torch.tensor(sum(v) / len(v), device=device)
            for category, v in sorted(groups.items())
        }


def standard_error(values: torch.Tensor | None) -> float:
    """The standard error of the mean of `values` (sample std / sqrt(n)); NaN for fewer
    than two values, whose noise cannot be told."""
    if values is None or values.numel() < 2:
        return float("nan")
    return float(values.double().std() / values.numel() ** 0.5)


def thumbnails(images: torch.Tensor, size: int = 256) -> torch.Tensor:
    """uint8 CPU copies of images no larger than `size`, kept for image grids."""
    if max(images.shape[-2:]) > size:
        images = torch.nn.functional.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True
        )
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def gather_samples(samples: list[dict], world_size: int) -> dict:
    """Every rank's evaluation samples, de-duplicated (DistributedSampler pads with repeats)
    and sorted by (prompt, seed) so grids are identical whatever the world size."""
    parts = [samples]
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, samples)
    rows: dict[tuple[str, int], tuple[torch.Tensor, dict[str, float], str | None]] = {}
    for batches in parts:
        for batch in batches:
            for i, (prompt, seed) in enumerate(zip(batch["prompts"], batch["seeds"], strict=True)):
                scores = {name: float(v[i]) for name, v in batch["scores"].items()}
                category = batch["categories"][i] if batch["categories"] else None
                rows.setdefault((prompt, seed), (batch["thumbnails"][i], scores, category))
    keys = sorted(rows)
    return {
        "prompts": [k[0] for k in keys],
        "seeds": [k[1] for k in keys],
        "thumbnails": [rows[k][0] for k in keys],
        "scores": [rows[k][1] for k in keys],
        "categories": [rows[k][2] for k in keys],
    }
