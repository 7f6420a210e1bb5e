"""Test-wide set-up: 8 simulated CPU devices (set before JAX is imported) and data paths."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """GSM8K and SVAMP: `$JAXRL_REASON_DATA`, else `../shared/data` beside the repository.

    Tests that read them are skipped, saying where to put them, when they are missing;
    CI sets JAXRL_REASON_REQUIRE_DATA=1, which makes that a failure instead.
    """
    path = pathlib.Path(os.environ.get("JAXRL_REASON_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "gsm8k" / "train.jsonl").exists():
        message = (
            f"GSM8K/SVAMP not found at {path} (needs gsm8k/train.jsonl): put them at "
            "../shared/data beside the repository, or set JAXRL_REASON_DATA=DIR"
        )
        if os.environ.get("JAXRL_REASON_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return path
