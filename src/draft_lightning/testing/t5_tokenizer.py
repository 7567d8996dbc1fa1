"""A T5-style tokenizer built offline, for the tiny FLUX and SD3 stand-ins.

FLUX.1 and SD3 read prompts with T5 v1.1's SentencePiece tokenizer, whose files are not on
this machine (the hub is unreachable). We write the same kind of tokenizer with the
`tokenizers` library: a Unigram model behind T5's pre-tokenizer (split on whitespace, then
"▁" before every word), T5's special ids (<pad>=0, </s>=1, <unk>=2, 100 <extra_id_*>
sentinels at the end) and T5's post-processor (</s> after every sequence). Its vocabulary
is every word of the package's prompt files and of the toy world's captions, plus single
characters so that no printable ASCII text becomes <unk>. The build is deterministic: the
same files, byte for byte, every time, so cached tiny models never depend on the run.

`transformers.T5TokenizerFast.from_pretrained(folder)` loads the folder the way it loads a
real T5 tokenizer.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, as in T5
NUM_EXTRA_IDS = 100
EXTRA_TOKENS = tuple(f"<extra_id_{i}>" for i in range(NUM_EXTRA_IDS))
MAX_LENGTH = 512  # T5 v1.1's model_max_length (FLUX's T5 reads up to 512 tokens)
WORD_BOUNDARY = "▁"  # SentencePiece's metaspace

# Unigram scores are log-probabilities; Viterbi picks the segmentation with the highest sum.
# A known word in one piece must beat any spelling of it, so a word scores more than two
# characters do (every word has at least one character after its "▁").
WORD_SCORE = -8.0
BOUNDARY_SCORE = -9.0
CHARACTER_SCORE = -12.0
PRINTABLE_ASCII = tuple(chr(c) for c in range(ord("!"), ord("~") + 1))


def default_texts() -> list[str]:
    """The text the vocabulary is built from: the bundled prompt files and the toy captions."""
    from draft_lightning.toy.world import all_captions

    texts = []
    for entry in sorted(
        resources.files("draft_lightning").joinpath("prompts").iterdir(), key=lambda e: e.name
    ):
        if entry.name.endswith(".txt"):
            texts.extend(entry.read_text(encoding="utf-8").splitlines())
    return texts + all_captions()


def vocabulary(texts: list[str]) -> list[tuple[str, float]]:
    """T5's layout: special tokens, pieces (characters, then "▁word" for each word in sorted
    order), then the sentinels in reverse (<extra_id_0> is the last id, as in T5)."""
    words = sorted({w for text in texts for w in re.findall(r"[^\W_]+", text)})
    pieces = [(token, 0.0) for token in SPECIAL_TOKENS]
    pieces.append((WORD_BOUNDARY, BOUNDARY_SCORE))
    pieces += [(c, CHARACTER_SCORE) for c in PRINTABLE_ASCII]
    pieces += [(WORD_BOUNDARY + w, WORD_SCORE) for w in words]
    pieces += [(token, 0.0) for token in reversed(EXTRA_TOKENS)]
    return pieces


def build_backend(texts: list[str] | None = None):
    """The `tokenizers.Tokenizer` with T5's pipeline around a Unigram model of `texts`."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = vocabulary(default_texts() if texts is None else texts)
    tokenizer = Tokenizer(Unigram(vocab, unk_id=SPECIAL_TOKENS.index(UNK_TOKEN)))
    # The same pre-tokenizer and decoder transformers' T5Tokenizer installs, so loading the
    # file through transformers (which rebuilds the pipeline around the vocabulary) or
    # through `tokenizers` gives the same ids.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always")
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS + EXTRA_TOKENS]
    )
    eos_id = SPECIAL_TOKENS.index(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", EOS_TOKEN],
        pair=["$A", EOS_TOKEN, "$B", EOS_TOKEN],
        special_tokens=[(EOS_TOKEN, eos_id)],
    )
    return tokenizer


def write_t5_tokenizer(folder: str | Path, texts: list[str] | None = None) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(
        build_backend(texts).to_str(pretty=True) + "\n", encoding="utf-8"
    )
    special = {
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "additional_special_tokens": list(EXTRA_TOKENS),
    }
    config = {
        **special,
        "extra_ids": NUM_EXTRA_IDS,
        "model_max_length": MAX_LENGTH,
        "tokenizer_class": "T5Tokenizer",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def vocab_size(texts: list[str] | None = None) -> int:
    """How many ids the tokenizer uses (the T5 encoder's embedding needs at least that many)."""
    return len(vocabulary(default_texts() if texts is None else texts))
