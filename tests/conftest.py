"""Test-wide set-up: 8 simulated CPU devices (set before JAX is imported) and data paths."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """`../shared/data` beside the repository (GSM8K and SVAMP); CI always has it."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not (path / "gsm8k" / "train.jsonl").exists():
        pytest.fail(
            f"shared data not found at {path}: the tests expect ../shared/data "
            "beside the repository (GSM8K and SVAMP files)"
        )
    return path
