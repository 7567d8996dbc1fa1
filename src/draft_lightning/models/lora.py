"""LoRA on the denoiser, in one place: settings, attaching, merging for steps without
gradient, exporting, importing and mixing. The only module that imports peft.

The denoiser's own weights stay frozen; only the adapter trains, in float32 whatever the
frozen weights' dtype, so small updates do not vanish in bf16/fp16.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from draft_lightning.errors import ConfigError
from draft_lightning.file_modes import as_if_created
from draft_lightning.models.sharding import full_tensor

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
# Names of the two LoRA matrices in files (diffusers' and peft's) and in peft's modules.
LORA_NAMES = (
    ("lora.down", "lora_A"),
    ("lora.up", "lora_B"),
    ("lora_A", "lora_A"),
    ("lora_B", "lora_B"),
)


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter on the denoiser (peft).

    Args:
        rank: LoRA rank r (the paper used 8 for small runs, 32 for large ones).
        alpha: LoRA alpha; the update is scaled by alpha / rank. None means alpha = rank.
        target_modules: denoiser module names (suffixes) that get an adapter; None means the
            model family's default (SD/SDXL: to_q, to_k, to_v, to_out.0; see docs/models.md).
        init: peft's init_lora_weights: "gaussian" (A ~ N(0, 1/r), B = 0) or "default"
            (Kaiming A, B = 0); either way the adapter starts as the identity.
        dropout: dropout on the LoRA branch.
    """

    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] | None = None
    init: str = "gaussian"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank={self.rank} must be >= 1")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha} must be > 0")
        if self.init not in ("gaussian", "default"):
            raise ConfigError(f"lora.init={self.init!r} must be 'gaussian' or 'default'")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name at least one module")


def check_targets(skeleton: nn.Module, targets: Sequence[str], hint: str) -> None:
    """Refuse target names the denoiser does not have (on a meta-device skeleton)."""
    names = [name for name, _ in skeleton.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ConfigError(
                f"lora.target_modules has {target!r}, which this model does not have ({hint})"
            )


def attach_lora(
    denoiser: nn.Module,
    settings: LoraSettings,
    targets: Sequence[str],
    adapter_name: str = "default",
) -> None:
    """Add a trainable peft LoRA adapter on `targets` of the frozen denoiser, in float32."""
    from peft import LoraConfig

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.rank,
        init_lora_weights=settings.init if settings.init == "gaussian" else True,
        target_modules=list(targets),
        lora_dropout=settings.dropout,
    )
    denoiser.add_adapter(config, adapter_name=adapter_name)
    for parameter in lora_parameters(denoiser):
        parameter.data = parameter.data.float()


def lora_parameters(denoiser: nn.Module) -> list[nn.Parameter]:
    """The adapter weights: the only parameters that train."""
    return [p for name, p in denoiser.named_parameters() if "lora_" in name]


@contextmanager
def lora_merged(denoiser: nn.Module) -> Iterator[None]:
    """Fold the active LoRA adapters into their base weights while no gradient is needed,
    then put the exact original weights back.

    Why: an unmerged adapter adds two small matmuls per targeted layer to every call, and
    DRaFT-K's no-grad prefix is most of a training step. The merged weights are fresh
    tensors, so restoring is exact (no W + BA - BA rounding drift over thousands of steps);
    the price is one copy of the targeted weights while merged. Layers whose LoRA dropout
    is active (training mode, dropout > 0) stay unmerged: merging would drop the dropout.
    """
    from peft.tuners.lora import LoraLayer

    originals = []
    try:
        with torch.no_grad():
            for layer in denoiser.modules():
                if not isinstance(layer, LoraLayer) or layer.merged or layer.disable_adapters:
                    continue
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if layer.training and any(
                    not isinstance(layer.lora_dropout[a], nn.Identity) for a in active
                ):
                    continue
                base = layer.get_base_layer()
                originals.append((layer, base, base.weight.data))
                base.weight.data = base.weight.data.clone()
                layer.merge(adapter_names=active)
        yield
    finally:
        with torch.no_grad():
            for layer, base, weight in originals:
                if layer.merged:
                    layer.unmerge()  # clears peft's merged state; its arithmetic is discarded
                base.weight.data = weight


@contextmanager
def adapters_disabled(denoiser: nn.Module) -> Iterator[None]:
    """The base model: the same denoiser with every adapter switched off."""
    denoiser.disable_adapters()
    try:
        yield
    finally:
        denoiser.enable_adapters()


def use_adapters(denoiser: nn.Module, names: Sequence[str], weights: Sequence[float]) -> None:
    """Generate with a weighted sum of adapters' updates (the paper's LoRA scaling and mixing)."""
    denoiser.set_adapters(list(names), weights=list(weights))


LORA_FORMATS = ("diffusers", "kohya")
KOHYA_WEIGHTS_NAME = "lora_kohya.safetensors"  # not *pytorch_lora_weights*: diffusers'
# load_lora_weights(folder) then still picks the diffusers file when both are there


def lora_state_dict(denoiser: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights (peft's names), float32 on the CPU. Weights sharded across ranks
    (FSDP2) are gathered whole: a collective, so every rank must call this."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(denoiser, adapter_name=adapter_name)
    return {k: full_tensor(v.detach()).float().cpu().contiguous() for k, v in state.items()}


def save_lora(
    denoiser: nn.Module,
    folder: Path,
    pipeline_class: str = "StableDiffusionPipeline",
    component: str = "unet",
    adapter_name: str = "default",
    formats: Sequence[str] = ("diffusers",),
    extra_files: dict[str, bytes] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter in each of `formats` ("diffusers": `pytorch_lora_weights.safetensors`
    with its metadata; "kohya": `lora_kohya.safetensors` for AUTOMATIC1111, ComfyUI and
    kohya-ss tools) and `extra_files` (name -> bytes, e.g. a model card) into `folder`,
    atomically: the folder is written beside its final place and renamed into it, so a
    reader never sees a half-written adapter.

    `pipeline_class` is the diffusers pipeline whose save_lora_weights writes the diffusers
    file (the model family's), so its load_lora_weights reads it; `component` is the
    pipeline part the adapter belongs to ("unet" or "transformer"). `state` is what
    `lora_state_dict` returned (a sharded model's adapter gathered on every rank); None
    reads it here.
    """
    unknown = [f for f in formats if f not in LORA_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"LoRA formats {list(formats)}: choose from {', '.join(LORA_FORMATS)}")
    if "kohya" in formats and component != "unet":
        raise ConfigError(
            f"LoRA format kohya is for UNet models (SD 1.x/2.x, SDXL); this adapter is on a "
            f"{component}: export diffusers only"
        )
    if state is None:
        state = lora_state_dict(denoiser, adapter_name)
    config = denoiser.peft_config[adapter_name]

    def fill(tmp: Path) -> None:
        if "diffusers" in formats:
            write_diffusers_lora(tmp, state, config, pipeline_class, component)
        if "kohya" in formats:
            write_kohya_lora(tmp / KOHYA_WEIGHTS_NAME, state, config)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)

    return write_folder_atomically(Path(folder), fill)


def write_folder_atomically(folder: Path, fill: Callable[[Path], None]) -> Path:
    """`fill` a temporary folder beside `folder`, then rename it into place (replacing an
    older `folder` whole); on any error nothing of the new folder is left behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        as_if_created(tmp)  # not mkdtemp's 0700: readable as far as the umask allows
        fill(tmp)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_diffusers_lora(
    folder: Path, state: dict[str, torch.Tensor], config, pipeline_class: str, component: str
) -> None:
    """diffusers' format, with the adapter's metadata (lora_alpha, rank, targets): without
    it diffusers assumes alpha = rank and a run trained with alpha != rank loads wrong."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers

    metadata = config.to_dict()
    # peft keeps target_modules as a set, whose order changes with PYTHONHASHSEED: sorted, two
    # exports of the same adapter carry the same metadata.
    if isinstance(metadata.get("target_modules"), set | list | tuple):
        metadata["target_modules"] = sorted(metadata["target_modules"])
    if component == "unet":  # UNet LoRA files use diffusers' own names (lora.down/up)
        state = convert_state_dict_to_diffusers(state)
    # Transformer families keep peft's lora_A/lora_B names, as diffusers' own FLUX and SD3
    # LoRA scripts save them: converted, only the to_q/k/v/out keys are renamed and SD3's
    # loader then drops those layers.
    getattr(diffusers, pipeline_class).save_lora_weights(
        folder,
        weight_name=LORA_WEIGHTS_NAME,
        **{
            f"{component}_lora_layers": state,
            f"{component}_lora_adapter_metadata": metadata,
        },
    )


def write_kohya_lora(path: Path, state: dict[str, torch.Tensor], config) -> None:
    """One kohya-ss file (`lora_unet_<module>.lora_down/lora_up.weight` and `.alpha`), the
    format AUTOMATIC1111, ComfyUI, SD.Next and InvokeAI load. Keys come from diffusers'
    converter; its alphas are set to the rank, so this adapter's own alpha replaces them
    (else alpha != rank would load with the wrong strength)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    alpha = torch.tensor(float(config.lora_alpha))
    kohya = {k: alpha.clone() if k.endswith(".alpha") else v for k, v in kohya.items()}
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.r),
        "ss_network_alpha": str(config.lora_alpha),
        "ss_training_comment": "exported by draft-lightning",
    }
    save_file(kohya, path, metadata=metadata)


def delta_weight_norm(denoiser: nn.Module, adapter_name: str = "default") -> torch.Tensor:
    """How far the adapter moves the model: sqrt(sum over adapted layers of
    ||scale * B A||_F^2), 0 for a fresh adapter (B = 0). Computed from the r x r products
    (||BA||_F^2 = trace((B^T B)(A A^T))), never forming B A. Sharded weights are gathered
    whole: a collective, so every rank must call this."""
    from peft.tuners.lora import LoraLayer

    total = None
    with torch.no_grad():
        for layer in denoiser.modules():
            if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
                continue
            down = full_tensor(layer.lora_A[adapter_name].weight).float().flatten(1)  # r x in
            up = full_tensor(layer.lora_B[adapter_name].weight).float().flatten(1)  # out x r
            squared = (up.T @ up * (down @ down.T)).sum() * layer.scaling[adapter_name] ** 2
            total = squared if total is None else total + squared
    return torch.zeros(()) if total is None else total.clamp_min(0).sqrt()


def load_lora(
    denoiser: nn.Module, folder: str | Path, adapter_name: str, component: str = "unet"
) -> None:
    """Load an exported adapter (ours, or any diffusers-format LoRA of this family) under a
    name, and check that every tensor of the file landed whole in the denoiser."""
    folder = Path(folder).expanduser()
    weights = folder / LORA_WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(f"adapter folder {str(folder)!r} has no {LORA_WEIGHTS_NAME}")
    from safetensors.torch import load_file

    state = load_file(weights)
    model = {"unet": "UNet"}.get(component, component)  # named in messages
    prefix = f"{component}."
    state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    try:
        denoiser.load_lora_adapter(
            str(folder),
            weight_name=LORA_WEIGHTS_NAME,
            adapter_name=adapter_name,
            prefix=component,
        )
    except Exception as error:  # noqa: BLE001 - peft/diffusers raise many types on a mismatch
        raise ConfigError(
            f"adapter {str(folder)!r} does not fit this {model} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})"
        ) from error
    # diffusers loads mismatched files with a warning at most: check that every tensor in the
    # file arrived, whole and unchanged, in a parameter of this adapter.
    params = dict(denoiser.named_parameters())
    for key, tensor in state.items():
        for file_name, part in LORA_NAMES:
            key = key.replace(f".{file_name}.weight", f".{part}.{adapter_name}.weight")
        param = params.get(key)
        if (
            param is None
            or param.shape != tensor.shape
            or not torch.equal(param.detach().cpu().to(tensor.dtype), tensor)
        ):
            denoiser.delete_adapters(adapter_name)
            found = "missing" if param is None else f"shape {tuple(param.shape)}"
            raise ConfigError(
                f"adapter {str(folder)!r} does not fit this {model}: {key} is "
                f"{tuple(tensor.shape)} in the file, {found} in the model"
            )
