"""Only the messages no user can act on are filtered; the rest of Lightning's output stays."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.utilities import rank_zero_info

from draft_lightning.training.quiet import RANK_ZERO_LOGGER, quiet_lightning_noise


def test_the_litlogger_tip_and_leafspec_warning_go_and_the_rest_stays(caplog):
    quiet_lightning_noise()
    quiet_lightning_noise()  # idempotent
    assert len(logging.getLogger(RANK_ZERO_LOGGER).filters) >= 1
    with caplog.at_level(logging.INFO, logger=RANK_ZERO_LOGGER):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try ...")
        rank_zero_info("val/reward: 0.1 at step 0 -> 0.9 at step 40")
    assert [r.getMessage() for r in caplog.records] == [
        "val/reward: 0.1 at step 0 -> 0.9 at step 40"
    ]
    with warnings.catch_warnings(record=True) as caught:
        quiet_lightning_noise()  # catch_warnings reset the filters
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", stacklevel=1)
        warnings.warn(
            "The `srun` command is available on your system but is not used.", stacklevel=1
        )
        warnings.warn("checkpoint_decode is off", stacklevel=1)
    assert [str(w.message) for w in caught] == ["checkpoint_decode is off"]


def test_diffusers_fp32_notice_goes_only_when_no_module_is_named():
    quiet_lightning_noise()
    logger = logging.getLogger("diffusers.models.modeling_utils")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        for modules in ("[]", "['proj_out']"):
            logger.warning(
                f"There are modules in AutoencoderKL that should be kept in float32: {modules}."
                " Casting directly with `to()` can lead to inconsistent results; ..."
            )
    finally:
        logger.removeHandler(handler)
    assert [("['proj_out']" in r.getMessage()) for r in records] == [True]
