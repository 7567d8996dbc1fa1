"""Finding reward weights: a local path, a Hugging Face Hub file or repo, or a registered name.

Every reward resolves its weights here before building anything, so that a missing file
stops the run at start-up with one line saying what is missing and how to supply it.
The Hub is asked for the local cache first (works offline), and only then over the network.
Nothing here runs code from a checkpoint: loaders use safetensors or
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from draft_lightning import registry
from draft_lightning.errors import ConfigError, ModelUnavailableError
from draft_lightning.hub import hub_file, snapshot

HF_PREFIX = "hf://"


def resolve_file(source: str, what: str) -> Path:
    """A local file for `source`: a path, `hf://<org>/<repo>/<file>` or a registered name
    (draft_lightning.registry, kind "weights").

    Args:
        source: Where the file lives.
        what: The setting being resolved (e.g. "AestheticReward.head"), used in messages.
    """
    if source.startswith(HF_PREFIX):
        repo_id, filename = split_hub_file(source, what)
        return hub_file(repo_id, filename, what)
    if registry.is_named("weights", source) or ":" in source:
        return registry.resolve("weights", source, what)
    path = Path(source).expanduser()
    if path.is_file():
        return path
    raise ModelUnavailableError(
        f"{what}={source!r}: no such file; give an existing file, "
        f"{HF_PREFIX}<org>/<repo>/<file> for a Hugging Face Hub file, or a registered name"
    )


def split_hub_file(source: str, what: str) -> tuple[str, str]:
    """`hf://org/repo/dir/file.pth` -> ("org/repo", "dir/file.pth")."""
    parts = source[len(HF_PREFIX) :].split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"{what}={source!r} is not of the form {HF_PREFIX}<org>/<repo>/<file>")
    return f"{parts[0]}/{parts[1]}", parts[2]


def resolve_folder(
    source: str, what: str, required: Sequence[str], weights: Sequence[str] = ()
) -> Path:
    """A local folder for `source`: an existing folder, a Hub repo id or a registered name
    (draft_lightning.registry, kind "weights").

    Args:
        source: Folder path, "org/repo" Hub id, or a registered name.
        what: The setting being resolved, used in messages.
        required: File names the folder must hold (e.g. config.json); "a|b" means either.
        weights: Alternative weight-file patterns in order of preference (e.g.
            "*.safetensors", then "pytorch_model*.bin"); from the Hub only the first one a
            repo has is fetched, beside its small config and tokenizer files.
    """
    if registry.is_named("weights", source) or ":" in source:
        return registry.resolve("weights", source, what)
    path = Path(source).expanduser()
    if path.is_dir():
        missing = [name for name in required if not _has(path, name)]
        if missing:
            wanted = ", ".join(missing).replace("|", " or ")
            raise ConfigError(f"{what}={source!r} is a folder without {wanted}")
        return path
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelUnavailableError(
            f"{what}={source!r} is neither an existing folder nor a Hugging Face repo id "
            "like 'org/name'"
        )
    return snapshot(source, what, ["*.json", "*.txt"], required, weights, instead="a local folder")


def load_weights_only(path: Path, what: str, mmap: bool = False) -> object:
    """`torch.load(weights_only=True)`, its refusal turned into a one-line ConfigError.

    `mmap=True` maps the tensors instead of reading them: a cheap check that a file loads
    weights-only before handing it to a library (open_clip retries a failed load without
    `weights_only` on a TypeError; a file that passed this check never gets there).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - pickle refusals and corrupt files alike
        if mmap and "mmap" in str(error):  # legacy, non-zip torch files cannot be mapped
            return load_weights_only(path, what)
        lines = str(error).strip().splitlines()
        first = lines[0] if lines else type(error).__name__
        raise ConfigError(
            f"{what}: {path} cannot be read with torch.load(weights_only=True) ({first[:200]}); "
            "convert it to a plain state dict or safetensors"
        ) from None


def _has(folder: Path, name: str) -> bool:
    return any((folder / option).is_file() for option in name.split("|"))


def load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from .safetensors, or from a torch file loaded weights-only.

    A torch file holding {"state_dict": {...}} (training checkpoints) is unwrapped.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = load_weights_only(path, what)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConfigError(f"{what}: {path} does not hold a state dict of tensors")
    return data
