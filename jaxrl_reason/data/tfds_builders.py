"""TFDS builders for GSM8K and SVAMP, written as `array_record` (no TensorFlow needed).

The builders read the official files from the manual directory (nothing is downloaded):

    builder = Gsm8k(data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/gsm8k"),
    )
    source = builder.as_data_source("test")   # random access, no TensorFlow
    source[0]["question"]                     # bytes

Records have text features `id`, `question`, `solution`, `answer` (bytes when read back
from a data source), in the loaders' order; `examples_from_source` turns them back into
`Example`s. Not imported by `jaxrl_reason.data` (importing TFDS is slow): import this
module explicitly.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator

import tensorflow_datasets as tfds
from etils import epath

from jaxrl_reason.data.example import Example
from jaxrl_reason.data.gsm8k import GSM8K_HOWTO, load_gsm8k
from jaxrl_reason.data.svamp import SVAMP_HOWTO, load_svamp

_FEATURES = ("id", "question", "solution", "answer")


def _info(builder: tfds.core.GeneratorBasedBuilder, description: str) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in _FEATURES}),
        supervised_keys=None,
        disable_shuffling=True,  # keep the loaders' order, not TFDS's key-hash shuffle
    )


def _records(examples: Iterable[Example]) -> Iterator[tuple[str, dict[str, str]]]:
    for ex in examples:
        yield (
            ex.id,
            {"id": ex.id, "question": ex.question, "solution": ex.solution, "answer": ex.answer},
        )


class _ManualBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared base: locates its code without `importlib_resources`.

    TFDS's default `code_path` touches the optional `importlib_resources` package for
    installed packages; this module is always a plain file, so its path is enough.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))


class Gsm8k(_ManualBuilder):
    """GSM8K train/test from `train.jsonl` and `test.jsonl` in the manual dir."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = GSM8K_HOWTO + " Pass that directory as manual_dir."

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "GSM8K grade-school math word problems (Cobbe et al. 2021).")

    def _split_generators(self, dl_manager):
        return {
            split: self._generate_examples(dl_manager.manual_dir, split)
            for split in ("train", "test")
        }

    def _generate_examples(self, manual_dir, split):
        yield from _records(load_gsm8k(manual_dir, split))


class Svamp(_ManualBuilder):
    """SVAMP with the fixed 700/300 train/test split of `jaxrl_reason.data.svamp`."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = SVAMP_HOWTO + " Put SVAMP.json in manual_dir."

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "SVAMP arithmetic word problems (Patel et al. 2021), 700/300 split.")

    def _split_generators(self, dl_manager):
        return {
            split: self._generate_examples(dl_manager.manual_dir, split)
            for split in ("train", "test")
        }

    def _generate_examples(self, manual_dir, split):
        yield from _records(load_svamp(manual_dir, split))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def examples_from_source(source) -> list[Example]:
    """`Example`s from a TFDS data source (e.g. `builder.as_data_source("test")`)."""
    return [Example(**{k: _text(source[i][k]) for k in _FEATURES}) for i in range(len(source))]
