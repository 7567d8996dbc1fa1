"""Prompt sources, one file per kind (see base.py)."""

from draft_lightning.data.sources.base import PromptSource, SourceCheck, SourceKind

__all__ = ["PromptSource", "SourceCheck", "SourceKind"]
