"""Estimators: where the reward gradient flows (one file each); chosen in YAML by class_path,
e.g. `draft_lightning.estimators.DraftLV`."""

from draft_lightning.estimators.base import Estimator
from draft_lightning.estimators.direct_align import DirectAlign
from draft_lightning.estimators.draft import Draft
from draft_lightning.estimators.draft_k import DraftK
from draft_lightning.estimators.draft_lv import DraftLV
from draft_lightning.estimators.random_truncation import RandomTruncation
from draft_lightning.estimators.refl import ReFL

__all__ = ["DirectAlign", "Draft", "DraftK", "DraftLV", "Estimator", "RandomTruncation", "ReFL"]
