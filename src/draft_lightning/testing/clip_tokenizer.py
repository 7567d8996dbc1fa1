"""SD 1.x's CLIP BPE tokenizer, written offline from the vocabulary open_clip ships.

The hub is unreachable where this project is tested; open_clip bundles CLIP's BPE file, from
which the vocab.json (49,408 entries) and merges.txt (48,894 merges) of SD's CLIPTokenizer
follow exactly, so prompts tokenize as with a real checkpoint.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
NUM_MERGES = 49152 - 256 - 2  # what CLIP keeps of the BPE file: 48,894 merges
MAX_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # what CLIP keeps of the BPE file: 48,894 merges


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (the GPT-2 / CLIP convention).

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255 so that BPE
    never sees whitespace or control characters. The insertion order (printable bytes
    first, then the others) is the order of the first 256 vocabulary ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _clip_merges() -> list[str]:
    """The merges CLIP uses, read from open_clip's bundled BPE file (no download)."""
    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is the "#version" header
    if len(merges) != NUM_MERGES:
        raise ValueError(f"expected {NUM_MERGES} merges in {default_bpe()}, got {len(merges)}")
    return merges


def write_clip_tokenizer(folder: str | Path, pad_token: str = EOS_TOKEN) -> Path:
    """Write SD 1.x's CLIPTokenizer files (vocab, merges, configs) into ``folder``.

    The files must be loaded with ``CLIPTokenizer.from_pretrained(folder)``: transformers 5
    ignores ``vocab_file=``/``merges_file=`` constructor arguments. ``pad_token="!"`` gives
    the OpenCLIP-style tokenizer of SD 2.x and SDXL's second text encoder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _clip_merges()
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [m.replace(" ", "") for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocab has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")

    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
    }
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
