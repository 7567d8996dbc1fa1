"""Lightning's messages that no user of this project can act on, filtered out; every other
warning and message is left alone.

- the LitLogger tip, printed at every fit: an advertisement for a logger, not about the run;
- the `srun` hint, printed when SLURM's `srun` exists but the run was not started by it: on
  a cluster's login node (a CPU demo, a `lightning predict`) that is the intent; real SLURM
  jobs here go through configs/slurm/ and never see it;
- `isinstance(treespec, LeafSpec)` is deprecated: Lightning's own use of a torch API (its
  _pytree.py), fixed by a Lightning release, not by anything a user writes.
"""

from __future__ import annotations

import logging
import warnings

RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
LITLOGGER_TIP = "Tip: For seamless cloud logging"


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return LITLOGGER_TIP not in record.getMessage()


def quiet_lightning_noise() -> None:
    """Install the filters above (idempotent)."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropTip) for f in logger.filters):
        logger.addFilter(_DropTip())
    warnings.filterwarnings("ignore", message=r".*`srun` command is available.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
