"""Lightning's messages that no user of this project can act on, filtered out; every other
warning and message is left alone.

- the LitLogger tip, printed at every fit: an advertisement for a logger, not about the run;
- the `srun` hint, printed when SLURM's `srun` exists but the run was not started by it: on
  a cluster's login node (a CPU demo, a `lightning predict`) that is the intent; real SLURM
  jobs here go through configs/slurm/ and never see it;
- `isinstance(treespec, LeafSpec)` is deprecated: Lightning's own use of a torch API (its
  _pytree.py), fixed by a Lightning release, not by anything a user writes;
- diffusers' "There are modules in AutoencoderKL that should be kept in float32: []" when a
  model is cast with `to(dtype)`: with an empty list there is no module to keep (diffusers
  logs it whenever the list exists); with modules in the list it still shows.
"""

from __future__ import annotations

import logging
import warnings

RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
LITLOGGER_TIP = "Tip: For seamless cloud logging"


DIFFUSERS_MODELS_LOGGER = "diffusers.models.modeling_utils"
NOTHING_TO_KEEP_IN_FP32 = "should be kept in float32: []."


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return LITLOGGER_TIP not in record.getMessage()


class _DropEmptyFp32Notice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return NOTHING_TO_KEEP_IN_FP32 not in record.getMessage()


def quiet_lightning_noise() -> None:
    """Install the filters above (idempotent)."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropTip) for f in logger.filters):
        logger.addFilter(_DropTip())
    diffusers_models = logging.getLogger(DIFFUSERS_MODELS_LOGGER)
    if not any(isinstance(f, _DropEmptyFp32Notice) for f in diffusers_models.filters):
        diffusers_models.addFilter(_DropEmptyFp32Notice())
    warnings.filterwarnings("ignore", message=r".*`srun` command is available.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
