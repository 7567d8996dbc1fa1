"""What a prompt encoder hands the sampler: the denoiser's keyword inputs for a batch.

Families differ in what their denoiser takes (SD: `encoder_hidden_states`; SDXL adds
`added_cond_kwargs`; FLUX adds `pooled_projections` and a `guidance` value; SD3 adds
`pooled_projections`). Carrying them as a dict of batch-first tensors lets one sampler and
one set of estimators serve every family: they repeat, slice and concatenate rows without
knowing what the rows mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """The denoiser's keyword inputs for a batch of prompts.

    Args:
        cond: the inputs for the prompts, each tensor batch first.
        uncond: the same keys for classifier-free guidance's unconditional branch, or None
            when sampling runs without it (guidance scale 1, and FLUX.1's guidance-distilled
            and schnell models, which take one denoiser call per step).
        copies: how many copies of each prompt the batch holds, copy-major
            ([copy 0's prompts..., copy 1's prompts...]).
    """

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None
    copies: int = 1

    def repeat(self, copies: int) -> Conditioning:
        """The same prompts `copies` times, copy-major."""
        if copies == 1:
            return self
        uncond = None if self.uncond is None else _repeat_rows(self.uncond, copies)
        return Conditioning(_repeat_rows(self.cond, copies), uncond, self.copies * copies)


def _repeat_rows(inputs: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    return {key: value.repeat(copies, *([1] * (value.dim() - 1))) for key, value in inputs.items()}
