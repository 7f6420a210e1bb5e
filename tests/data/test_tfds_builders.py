"""TFDS builders write array_record files and read back through a data source (no TF)."""

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jaxrl_reason.data.gsm8k import load_gsm8k  # noqa: E402
from jaxrl_reason.data.svamp import load_svamp  # noqa: E402
from jaxrl_reason.data.tfds_builders import Gsm8k, Svamp, examples_from_source  # noqa: E402


def _prepare(builder_cls, data_dir, manual_dir):
    builder = builder_cls(data_dir=str(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
    )
    return builder


def test_gsm8k_builder_round_trips(tmp_path, shared_data_dir):
    builder = _prepare(Gsm8k, tmp_path, shared_data_dir / "gsm8k")
    source = builder.as_data_source("test")
    expected = load_gsm8k(shared_data_dir / "gsm8k", "test")
    assert len(source) == len(expected) == 1319
    assert examples_from_source(source)[:5] == expected[:5]
    assert source[3]["answer"] == expected[3].answer.encode()
    assert len(tfds.data_source("gsm8k", data_dir=str(tmp_path), split="train")) == 7473


def test_svamp_builder_round_trips(tmp_path, shared_data_dir):
    builder = _prepare(Svamp, tmp_path, shared_data_dir / "svamp")
    assert examples_from_source(builder.as_data_source("test")) == load_svamp(
        shared_data_dir / "svamp", "test"
    )


def test_missing_manual_dir_names_instructions(tmp_path):
    with pytest.raises(Exception, match="grade-school-math"):
        _prepare(Gsm8k, tmp_path / "out", tmp_path / "nowhere")
