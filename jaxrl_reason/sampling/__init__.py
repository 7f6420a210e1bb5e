"""KV-cache sampling: one prefill per prompt shared by K samples, a jitted decode loop."""

from jaxrl_reason.sampling.config import SamplingConfig, bucket_size
from jaxrl_reason.sampling.prompts import validate_prompts
from jaxrl_reason.sampling.sampler import SampleOutput, Sampler
from jaxrl_reason.sampling.strategies import StepSample, Strategy, nucleus_mask, sample_step
from jaxrl_reason.sampling.text import TextSampler, TextSamples

__all__ = [
    "SampleOutput",
    "Sampler",
    "SamplingConfig",
    "StepSample",
    "Strategy",
    "TextSampler",
    "TextSamples",
    "bucket_size",
    "nucleus_mask",
    "sample_step",
    "validate_prompts",
]
