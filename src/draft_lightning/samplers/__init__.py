"""Samplers: the gradient-window loop once (base.py), one file per sampler kind."""

from draft_lightning.samplers.base import Sampler, SampleResult
from draft_lightning.samplers.conditioning import Conditioning
from draft_lightning.samplers.settings import SamplingSettings

__all__ = ["Conditioning", "SampleResult", "Sampler", "SamplingSettings"]
