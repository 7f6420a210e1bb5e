import math

import pytest

from jaxrl_reason.sampling import SamplingConfig, bucket_size
from jaxrl_reason.sampling.config import chunk_sizes


@pytest.mark.parametrize("n", [1, 2, 3, 31, 32, 33, 100])
def test_bucket_size_matches_formula(n):
    assert bucket_size(n, 32) == 32 * math.ceil(n / 32)
    assert bucket_size(n, 0) == 2 ** math.ceil(math.log2(n))
    assert bucket_size(n, 1) == n


@pytest.mark.parametrize(("length", "chunks"), [(128, 4), (13, 3), (5, 8), (1, 1), (97, 4)])
def test_chunk_sizes_cover_the_length_nearly_evenly(length, chunks):
    sizes = chunk_sizes(length, chunks)
    assert sum(sizes) == length and len(sizes) == min(chunks, length)
    assert max(sizes) - min(sizes) <= 1 and list(sizes) == sorted(sizes, reverse=True)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("num_samples", 0, "num_samples"),
        ("top_p", 0.0, "top_p"),
        ("top_p", 1.5, "top_p"),
        ("temperature", -0.1, "temperature"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("top_k", -1, "top_k"),
        ("prompt_bucket", -2, "prompt_bucket"),
        ("decode_chunks", 0, "decode_chunks"),
        ("temperature", math.nan, "SamplingConfig.temperature must be a finite number"),
        ("top_p", math.nan, "SamplingConfig.top_p must be a finite number"),
        ("top_k", 2.5, "SamplingConfig.top_k must be an integer >= 0"),
        ("num_samples", 4.0, "SamplingConfig.num_samples must be an integer > 0"),
        ("eos_ids", "2", "SamplingConfig.eos_ids must be a list of integers.*bare string"),
        ("eos_ids", [2, 3.5], r"SamplingConfig.eos_ids\[1\] must be an integer"),
    ],
)
def test_bad_config_names_the_field(field, value, words):
    with pytest.raises(ValueError, match=words):
        SamplingConfig(**{field: value})


def test_eos_ids_become_a_hashable_tuple():
    cfg = SamplingConfig(eos_ids=[3, 4])
    assert cfg.eos_ids == (3, 4)
    hash(cfg)
    assert SamplingConfig(temperature=0.0).greedy and not SamplingConfig().greedy
