"""Model families, one file each; the family of a checkpoint folder comes from its
model_index.json (the diffusers pipeline class that saved it), never from flags.

Adding a family is adding a file here that defines a `ModelFamily` subclass: every module of
this package is imported on first use and its families registered by pipeline class.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from draft_lightning.errors import ConfigError
from draft_lightning.models.families.base import ModelFamily, read_json


@cache
def families() -> dict[str, ModelFamily]:
    """Pipeline class name -> family, for every family defined in this package."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, ModelFamily] = {}
    pending = list(ModelFamily.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if "pipeline_classes" in vars(cls):  # concrete families name their pipelines
            family = cls()
            for pipeline in cls.pipeline_classes:
                found[pipeline] = family
    return found


def family_of(folder: Path) -> ModelFamily:
    """The family of a diffusers folder, from the pipeline class that saved it."""
    known = families()
    index_file = folder / "model_index.json"
    if not index_file.is_file():  # a bare parts folder: SDXL is the one with two encoders
        two_encoders = (folder / "text_encoder_2").is_dir()
        return known["StableDiffusionXLPipeline" if two_encoders else "StableDiffusionPipeline"]
    name = read_json(index_file).get("_class_name")
    if name not in known:
        raise ConfigError(
            f"{folder} holds a {name}, which draft_lightning does not train (supported: "
            f"{', '.join(known)})"
        )
    return known[name]


def check_options(family: ModelFamily, options: dict) -> None:
    """Refuse a family-specific option set for a model of another family."""
    owners = {key: f for f in set(families().values()) for key in f.options}
    for key, value in options.items():
        owner = owners.get(key)
        if owner is None:
            raise ConfigError(f"{key} is not an option of any model family")
        if key not in family.options and value != owner.options[key]:
            raise ConfigError(
                f"{key} is set but the model is not {owner.display_name} "
                f"({family.pipeline_class}); remove it"
            )


__all__ = ["ModelFamily", "check_options", "families", "family_of"]
