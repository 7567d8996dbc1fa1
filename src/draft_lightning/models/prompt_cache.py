"""Prompt embeddings computed once and kept on disk, so that training never loads the text
encoders (FLUX.1's T5 alone is 4.7 B parameters, about 9.5 GB in bf16).

One safetensors file per prompt holds what the family's prompt encoder gives for that prompt
(`Conditioning.cond`, nested dicts flattened with "/"), and one file the unconditional inputs
for classifier-free guidance. Files live in a folder named by a digest of the model key: the
model folder, its text encoders' and tokenizers' files (names and sizes), the frozen dtype and
every setting that changes the inputs (guidance scale, resolution, family options), so a cache
never serves another model's embeddings. Writes are atomic (temporary file, then rename);
ranks and nodes writing the same file at once write the same bytes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.file_modes import as_if_created
from draft_lightning.samplers.conditioning import Conditioning

UNCONDITIONAL = "unconditional.safetensors"
SEPARATOR = "/"


def text_files(folder: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every file under the text encoder and tokenizer folders."""
    found = []
    for part in sorted(folder.iterdir()):
        if part.is_dir() and part.name.startswith(("text_encoder", "tokenizer")):
            for file in sorted(part.rglob("*")):
                if file.is_file():
                    found.append((str(file.relative_to(folder)), file.stat().st_size))
    return found


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def flatten(inputs: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """{"a": t, "b": {"c": u}} -> {"a": t, "b/c": u}, contiguous on the CPU."""
    flat = {}
    for key, value in inputs.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + SEPARATOR))
        else:
            flat[name] = value.detach().cpu().contiguous()
    return flat


def unflatten(flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(SEPARATOR)
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


class PromptEmbeddingCache:
    """The cache folder of one model key (see the module docstring)."""

    def __init__(self, root: str | Path, key: dict[str, Any]) -> None:
        self.key_text = json.dumps(key, sort_keys=True)
        self.folder = Path(root).expanduser() / _digest(self.key_text, 16)

    def path(self, prompt: str) -> Path:
        return self.folder / f"{_digest(prompt, 40)}.safetensors"

    def missing(self, prompts: Sequence[str]) -> list[str]:
        """Prompts without a file, in first-seen order, without repeats."""
        return [p for p in dict.fromkeys(prompts) if not self.path(p).is_file()]

    def write(self, path: Path, tensors: dict[str, torch.Tensor], prompt: str) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "model.json"
        if not key_file.is_file():
            self._replace(key_file, lambda tmp: Path(tmp).write_text(self.key_text + "\n"))
        metadata = {"prompt": prompt, "model": self.key_text}
        self._replace(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def _replace(self, path: Path, write: Callable[[str], object]) -> None:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(handle)
        try:
            as_if_created(tmp)  # not mkstemp's 0600: readable as far as the umask allows
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, path: Path, prompt: str) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        if not path.is_file():
            what = "the unconditional inputs" if path.name == UNCONDITIONAL else repr(prompt)
            raise ConfigError(
                f"prompt_embedding_cache={str(self.folder.parent)!r} has no embedding of "
                f"{what} for this model ({self.folder.name}); they are computed at the start "
                "of a run for every prompt of the data module's sources"
            )
        with safe_open(str(path), framework="pt") as file:
            if (file.metadata() or {}).get("prompt") != prompt:
                raise ConfigError(f"{path} holds another prompt's embedding: delete the file")
            return {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118


class CachedPromptEncoder(nn.Module):
    """Conditioning read from a `PromptEmbeddingCache`; the text encoders are built only to
    fill missing entries (`precompute`) and freed right after, never during training.

    Args:
        cache: where the embeddings are.
        guidance_scale: the guidance the embeddings were computed for (FLUX.1-dev's guidance
            is one of its inputs; it is part of the cache key).
        load_encoder: builds the family's real prompt encoder (on the CPU).
    """

    def __init__(
        self,
        cache: PromptEmbeddingCache,
        guidance_scale: float,
        load_encoder: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.cache = cache
        self.guidance_scale = guidance_scale
        self.load_encoder = load_encoder
        # Follows the module across devices (Lightning moves it), so embeddings land there.
        self.register_buffer("anchor", torch.zeros(0), persistent=False)
        self.encoders_built = 0  # how many times the real encoders were constructed

    def precompute(
        self, prompts: Sequence[str], device: torch.device | str = "cpu", batch_size: int = 16
    ) -> int:
        """Encode and store every prompt the cache lacks (and the unconditional inputs), with
        the text encoders on `device`, then free them. Returns how many prompts were encoded."""
        missing = self.cache.missing(prompts)
        need_uncond = not (self.cache.folder / UNCONDITIONAL).is_file()
        if not missing and not need_uncond:
            return 0
        encoder = self.load_encoder().to(device)
        self.encoders_built += 1
        try:
            todo = missing or [""]  # the unconditional inputs come with any encoded batch
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                text = encoder.condition(batch, self.guidance_scale)
                cond = flatten(text.cond)
                for row, prompt in enumerate(batch):
                    if prompt in missing:
                        row_tensors = {k: v[row : row + 1].clone() for k, v in cond.items()}
                        self.cache.write(self.cache.path(prompt), row_tensors, prompt)
                if need_uncond:
                    uncond = {} if text.uncond is None else flatten(text.uncond)
                    first = {k: v[:1].clone() for k, v in uncond.items()}
                    self.cache.write(self.cache.folder / UNCONDITIONAL, first, "")
                    need_uncond = False
        finally:
            del encoder
            gc.collect()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        return len(missing)

    def condition(self, prompts: Sequence[str], guidance_scale: float) -> Conditioning:
        if guidance_scale != self.guidance_scale:
            raise ConfigError(
                f"the prompt embedding cache was built for guidance {self.guidance_scale}, "
                f"not {guidance_scale}"
            )
        device = self.anchor.device
        rows = [self.cache.read(self.cache.path(p), p) for p in prompts]
        cond = {k: torch.cat([row[k] for row in rows]).to(device) for k in rows[0]}
        uncond_row = self.cache.read(self.cache.folder / UNCONDITIONAL, "")
        uncond = None
        if uncond_row:
            batch = len(prompts)
            uncond = unflatten(
                {k: v.to(device).expand(batch, *v.shape[1:]) for k, v in uncond_row.items()}
            )
        return Conditioning(unflatten(cond), uncond)
