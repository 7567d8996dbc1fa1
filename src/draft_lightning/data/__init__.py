"""Prompt data: the DataModule, the seeded stream dealt to ranks, sources and readers."""

from draft_lightning.data.module import (
    PromptDataModule,
    ValidationPrompts,
    builtin_prompt_sets,
    collate_val,
    load_prompts,
)
from draft_lightning.data.sources import PromptSource
from draft_lightning.data.sources.base import estimated_tokens
from draft_lightning.data.stream import PromptStream, collate_train

__all__ = [
    "PromptDataModule",
    "PromptSource",
    "PromptStream",
    "ValidationPrompts",
    "builtin_prompt_sets",
    "collate_train",
    "collate_val",
    "estimated_tokens",
    "load_prompts",
]
