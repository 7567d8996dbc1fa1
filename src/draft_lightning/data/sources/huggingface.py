"""A Hugging Face dataset (`hf:<dataset id>`), streamed; needs the optional `datasets`
package and a reachable hub."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from random import Random
from typing import Any

from draft_lightning.data.readers import Record, read_json_rows
from draft_lightning.data.sources.base import SourceKind
from draft_lightning.errors import ConfigError

HF_PREFIX = "hf:"


class HuggingFaceDataset(SourceKind):
    """`hf:owner/name`: the split `data.hf_split` (and subset `data.hf_subset`) of a dataset."""

    prefix = HF_PREFIX
    description = "hf:<dataset id>"
    has_fields = True
    is_local = False

    def __init__(self, spec, name, fields, options) -> None:
        super().__init__(spec, name, fields, options)
        self.dataset = spec[len(HF_PREFIX) :].strip()
        if self.dataset.count("/") > 1 or not self.dataset:
            raise ConfigError(f"{name}={spec!r} is not hf:<dataset id> (e.g. hf:owner/name)")
        if importlib.util.find_spec("datasets") is None:
            raise ConfigError(
                f"{name}={spec!r} needs the Hugging Face datasets package: "
                "pip install datasets (or export the prompts to a local file)"
            )

    def records(self, rng: Random | None) -> Iterator[Record]:
        yield from read_json_rows(self._rows(), self.fields, f"hf:{self.dataset}")

    def why_empty(self) -> str:
        return f"has no prompts in split {self.options['hf_split']!r}"

    def _rows(self) -> Iterator[dict[str, Any]]:
        """Rows of the Hugging Face dataset, streamed; opening it is wrapped in a ConfigError."""
        import datasets  # optional dependency, checked when the source was resolved

        try:
            dataset = datasets.load_dataset(
                self.dataset,
                name=self.options["hf_subset"],
                split=self.options["hf_split"],
                streaming=True,
            )
            rows = iter(dataset)
            first = next(rows, None)
        except Exception as error:  # noqa: BLE001 - network, auth, missing dataset or split
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ConfigError(
                f"{self.name}={self.spec!r}: cannot stream the Hugging Face dataset "
                f"(split {self.options['hf_split']!r}): {type(error).__name__}"
                f"{': ' + reason[:200] if reason else ''}; the hub may be unreachable: "
                "download the prompts where it is reachable and point to the local files"
            ) from None
        if first is not None:
            yield first
            yield from rows
