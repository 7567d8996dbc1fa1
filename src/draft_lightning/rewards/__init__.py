"""Rewards: frozen differentiable scorers of generated images (higher is better)."""

from draft_lightning.rewards.base import Reward
from draft_lightning.rewards.pixel import Brightness, Colorfulness, JPEGCompressibility
from draft_lightning.rewards.weighted import WeightedSum

__all__ = ["Brightness", "Colorfulness", "JPEGCompressibility", "Reward", "WeightedSum"]
