"""Resume through a real Lightning Trainer: a run checkpointed at step N and resumed to step 2N
trains on exactly the prompts of an uninterrupted 2N-step run, although Lightning and the
DataLoader workers had read batches ahead when the checkpoint was written."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from draft_lightning.data import PromptDataModule, PromptSource, PromptStream

N = 5


class Recorder(LightningModule):
    """Records the prompts of every training batch; one trivial trainable parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(list(batch["prompts"]))
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert set(batch) == {"prompts", "seeds"}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def every(dirpath) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath, every_n_train_steps=N, save_top_k=-1, filename="{step}")


def fit(path, tmp_path, num_workers, max_steps, trainer_kwargs, checkpoint=None, ckpt_path=None):
    data = PromptDataModule(str(path), batch_size=3, num_workers=num_workers, num_val_prompts=2)
    model = Recorder()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=checkpoint is not None,
        callbacks=[checkpoint] if checkpoint else [],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize(
    ("num_workers", "trainer_kwargs"),
    [
        (0, {}),
        (2, {}),
        (0, {"accumulate_grad_batches": 2, "limit_train_batches": 6}),  # epochs + accumulation
    ],
    ids=["workers0", "workers2", "epochs-accumulate"],
)
def test_resumed_run_sees_the_prompts_of_an_uninterrupted_run(
    tmp_path, num_workers, trainer_kwargs
):
    path = tmp_path / "prompts.txt"  # 20 prompts, batches of 3: passes end inside batches
    path.write_text("".join(f"prompt {i}\n" for i in range(20)), encoding="utf-8")
    accumulate = trainer_kwargs.get("accumulate_grad_batches", 1)

    full = fit(path, tmp_path / "full", num_workers, 2 * N, trainer_kwargs)
    assert len(full) == 2 * N * accumulate
    # what was trained on is the stream's prefix: no batch lost to prefetching, no restart at a
    # new epoch
    stream = PromptStream(PromptSource(str(path)), num_prompts=20).global_stream()
    prefix = [prompt for _, (prompt, _) in itertools.islice(stream, 3 * len(full))]
    assert [p for batch in full for p in batch] == prefix

    # the "preempted" run goes past the step-N checkpoint before it stops
    first = fit(path, tmp_path / "a", num_workers, N + 2, trainer_kwargs, every(tmp_path / "ckpt"))
    ckpt = tmp_path / "ckpt" / f"step={N}.ckpt"
    state = torch.load(ckpt, weights_only=False)["PromptDataModule"]
    assert state["position"] == N * accumulate * 3

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(
            path, tmp_path / "b", num_workers, 2 * N, trainer_kwargs, every(ckpt.parent), ckpt
        )
    assert not [w for w in caught if "not resumable" in str(w.message)]

    assert first == full[: len(first)]
    assert first[: N * accumulate] + resumed == full
