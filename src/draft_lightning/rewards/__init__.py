"""Rewards: frozen differentiable scorers of generated images (higher is better).

The model-based rewards (AestheticReward, HPSv2Reward, PickScoreReward, CLIPScoreReward)
import open_clip/transformers only when one is built, so importing this package stays cheap.
"""

from draft_lightning.rewards.aesthetic import AestheticReward
from draft_lightning.rewards.base import Reward
from draft_lightning.rewards.clip_score import CLIPScoreReward
from draft_lightning.rewards.hpsv2 import HPSv2Reward
from draft_lightning.rewards.pickscore import PickScoreReward
from draft_lightning.rewards.pixel import Brightness, Colorfulness, JPEGCompressibility
from draft_lightning.rewards.preprocess import ImageTransform
from draft_lightning.rewards.relative import RelativeReward
from draft_lightning.rewards.weighted import WeightedSum

__all__ = [
    "AestheticReward",
    "Brightness",
    "CLIPScoreReward",
    "Colorfulness",
    "HPSv2Reward",
    "ImageTransform",
    "JPEGCompressibility",
    "PickScoreReward",
    "RelativeReward",
    "Reward",
    "WeightedSum",
]
