"""What a hub download of a flow matching checkpoint fetches (models/loading.py's patterns,
applied by huggingface_hub's own filter, as snapshot_download applies them), and the one
line a gated repo gets when it cannot be downloaded."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import filter_repo_objects

from draft_lightning.errors import ModelUnavailableError
from draft_lightning.models.loading import HUB_PATTERNS, resolve_pretrained

# File names as the hub lists them for these repos (2025); what sampling needs is marked.
FLUX_DEV = {
    "ae.safetensors": False,  # the same VAE again, for other tools
    "flux1-dev.safetensors": False,  # the whole transformer in one 23 GB file
    "model_index.json": True,
    "scheduler/scheduler_config.json": True,
    "text_encoder/config.json": True,
    "text_encoder/model.safetensors": True,
    "text_encoder_2/config.json": True,
    "text_encoder_2/model-00001-of-00002.safetensors": True,
    "text_encoder_2/model-00002-of-00002.safetensors": True,
    "text_encoder_2/model.safetensors.index.json": True,
    "tokenizer/vocab.json": True,
    "tokenizer/merges.txt": True,
    "tokenizer_2/spiece.model": True,
    "tokenizer_2/tokenizer.json": True,
    "transformer/config.json": True,
    "transformer/diffusion_pytorch_model-00001-of-00003.safetensors": True,
    "transformer/diffusion_pytorch_model-00003-of-00003.safetensors": True,
    "transformer/diffusion_pytorch_model.safetensors.index.json": True,
    "vae/config.json": True,
    "vae/diffusion_pytorch_model.safetensors": True,
}
SD35_MEDIUM = {
    "sd3.5_medium.safetensors": False,  # single-file checkpoint for other tools
    "text_encoders/t5xxl_fp16.safetensors": False,  # the same encoders, for other tools
    "text_encoders/clip_g.safetensors": False,
    "model_index.json": True,
    "text_encoder_2/model.safetensors": True,
    "text_encoder_3/model-00001-of-00002.safetensors": True,
    "text_encoder_3/model-00002-of-00002.safetensors": True,
    "text_encoder_3/model.safetensors.index.json": True,
    "tokenizer_3/spiece.model": True,
    "transformer/config.json": True,
    "transformer/diffusion_pytorch_model.safetensors": True,
    "vae/diffusion_pytorch_model.safetensors": True,
}


@pytest.mark.parametrize("files", [FLUX_DEV, SD35_MEDIUM], ids=["FLUX.1-dev", "SD3.5-medium"])
def test_the_patterns_fetch_the_sharded_parts_and_skip_the_single_file_copies(files):
    fetched = set(filter_repo_objects(list(files), allow_patterns=HUB_PATTERNS))
    assert fetched == {name for name, needed in files.items() if needed}


def test_a_gated_repo_that_cannot_be_fetched_says_to_accept_its_licence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    for repo in ("stabilityai/stable-diffusion-3.5-medium", "black-forest-labs/FLUX.1-dev"):
        with pytest.raises(ModelUnavailableError) as error:
            resolve_pretrained(repo)
        message = str(error.value)
        assert f"{repo} is gated: accept its licence at https://huggingface.co/{repo}" in message
        assert f"hf download {repo}" in message and "\n" not in message
    with pytest.raises(ModelUnavailableError) as error:
        resolve_pretrained("black-forest-labs/FLUX.1-schnell")  # Apache 2.0: not gated
    assert "is gated" not in str(error.value)
