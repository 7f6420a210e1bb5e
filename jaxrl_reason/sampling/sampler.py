"""The KV-cache sampler: prefill each prompt once, decode K samples per prompt in a jitted loop.

Two jitted programs per bucket of shapes:
  prefill(params, prompt [Bp, P]) -> the prompt's KV cache [L, Bp, K, P, H] and last logits
  decode(params, prompt cache, ...) -> K samples per prompt
Prefill is the model's own cached forward pass. Decode never copies the prompt's cache:
each layer attends to two segments (`Attention`), the prompt's keys shared by its K rows
(row r = prompt r // K), read once per prompt, and a per-row segment of generated keys. A
`lax.while_loop` runs the model's `decode_step` (layers unrolled, their weights sliced
once before the loop) and stops as soon as every row has hit EOS or the length limit;
each step writes the new key and value into the generated segment in place before
reading it. Shapes are bucketed
(prompt length, generation length, number of prompts) so a long run compiles a few
programs; each compilation is logged at INFO and counted in `Sampler.compilations`.

On CPUs, a decode of few rows per device is compiled with Eigen's matmuls instead of
XLA's default YNNPACK fusions (`CPU_EIGEN_MAX_ROWS`), faster there and equal up to float
rounding (tests/sampling/test_sampler.py checks the samples agree).

Sliding-window layers mask by slots of one timeline shared by every row: the prompt's P
slots, then the generated chunks' slots after it. A prompt is left-padded, so for real
tokens slot distance is position distance, as in a full forward pass (and in HF).

Row counts are rounded up to a multiple of the mesh's batch shards; extra rows are dummies
that start finished. Sample n (prompt n // K, sample n % K) draws its t-th token with
`fold_in(fold_in(rng, n), t)`, so the samples for a fixed key depend neither on the
sharding, nor the padding, nor on which decode row they ran in.

Refill (`SamplingConfig.decode_rows` = R > 0, fewer than the call's samples): rollouts end
at widely varied lengths, and a static decode keeps every finished row in the batch until
the longest ends. The refilling decode runs R rows in one `while_loop`; when a row's sample
ends (EOS, a stop sequence or the length limit), the next pending sample takes the row in
the same step: its position, its generated-key mask and its stop window restart, and its
first token comes from its prompt's prefill logits. Every prompt is still prefilled once
(all of the call's prompts, before the loop); a row reads its prompt's cache by index, so
the K samples of a prompt share one prefill but not one read of it.

Stop sequences (`stop_ids`, their token ids) end a row in the loop when its newest tokens
equal one of them, instead of decoding to the length budget; the text is still cut at the
stop string afterwards (`TextSampler`), so a stop sequence tokenised some other way is cut
as before, only later.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec

from jaxrl_reason.model.config import ModelConfig
from jaxrl_reason.model.transformer import (
    Cache,
    Transformer,
    decode_step,
    default_positions,
    param_logical_axes,
    rope_table,
    unstack_layers,
)
from jaxrl_reason.parallel.hosts import to_host
from jaxrl_reason.parallel.rules import (
    Rules,
    activation_sharding,
    axis_rules,
    batch_sharding,
    batch_shards,
    logical_shardings,
    replicated,
)
from jaxrl_reason.sampling.config import SamplingConfig, bucket_size, chunk_sizes
from jaxrl_reason.sampling.prompts import Prompts, left_pad, validate_prompts
from jaxrl_reason.sampling.strategies import Strategy, sample_step

log = logging.getLogger(__name__)
CACHE_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")

# Rows per device at or below which the CPU decode uses Eigen matmuls, not YNNPACK's
# (measured crossover: BENCHMARKS.md, "Eigen matmuls for small decodes").
CPU_EIGEN_MAX_ROWS = 16
_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
# The decode loops report the tokens generated so far to `Sampler.sample`'s `progress`
# every this many steps (a host callback; rarer ones cost nothing measurable).
PROGRESS_EVERY = 16
_WILDCARD = -2  # stop-table padding: matches any token (stop windows start at -1: none)
_progress_hooks: list[Callable[[int], None]] = []


def _report_progress(tokens: Any) -> None:
    """Host side of the decode loops' progress callback: the innermost `sample` call's hook."""
    if _progress_hooks:
        _progress_hooks[-1](int(tokens))


def stop_table(stop_ids: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """Stop sequences' token ids as a table [S, L] right-aligned, padded with a wildcard.

    A row has hit stop sequence s when its last L tokens equal row s (wildcards match
    anything; a row's window of last tokens starts as -1, no token, so a sequence longer
    than what the row has generated cannot match). No sequences: a table [0, 1].
    """
    seqs = [tuple(int(i) for i in seq) for seq in stop_ids]
    for seq in seqs:
        if not seq:
            raise ValueError("stop_ids holds an empty sequence; drop it or give its token ids")
        bad = [i for i in seq if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(
                f"stop sequence {list(seq)} has ids {bad} outside the vocabulary "
                f"[0, {vocab_size}); pass the tokenizer's ids"
            )
    width = max((len(q) for q in seqs), default=1)
    table = np.full((len(seqs), width), _WILDCARD, np.int32)
    for row, seq in zip(table, seqs):
        row[width - len(seq) :] = seq
    return table


def _hit_stop(window: jax.Array, table: jax.Array) -> jax.Array:
    """[R] whether each row's window of last tokens [R, L] ends with a stop sequence."""
    same = (table[None] == _WILDCARD) | (window[:, None, :] == table[None])  # [R, S, L]
    return jnp.any(jnp.all(same, axis=-1), axis=-1)


def _push(window: jax.Array, tokens: jax.Array) -> jax.Array:
    """The windows [R, L] with each row's newest token appended (the oldest dropped)."""
    return jnp.concatenate([window[:, 1:], tokens[:, None]], axis=1)


def _maybe_report(step: jax.Array, tokens: jax.Array) -> None:
    jax.lax.cond(
        step % PROGRESS_EVERY == 0,
        lambda: jax.debug.callback(_report_progress, tokens),
        lambda: None,
    )


@functools.cache
def _cpu_without_ynn() -> dict[str, Any] | None:
    """`_NO_YNN` if this jaxlib knows the option (older ones have no YNNPACK), else None."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_NO_YNN).lower(np.int32(0)).compile()
    except Exception:  # noqa: BLE001 - any failure means "not supported here"
        log.info("XLA has no %s; decode keeps its default matmuls", *_NO_YNN)
        return None
    return dict(_NO_YNN)


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """K samples for each of B prompts, as numpy arrays on the host.

    `tokens` hold `pad_id` after a sample ends; `lengths` count generated tokens including
    the EOS; `logprobs` are under the sampling distribution (temperature and truncation
    applied; for greedy, the policy log-prob of the argmax) and `policy_logprobs` under the
    raw policy (temperature 1, no truncation); both are 0 at padding. `stopped_by_eos`
    is False for a sample ended by a stop sequence. `decode_steps` is how many tokens the
    loop generated per row before every row was done, and `decode_rows_steps` its decode
    work, rows x steps: 1 - lengths.sum() / decode_rows_steps of it went to rows that had
    finished (or never held a sample).
    """

    tokens: np.ndarray  # [B, K, T] int32
    lengths: np.ndarray  # [B, K] int32
    stopped_by_eos: np.ndarray  # [B, K] bool (False: stopped by max_new_tokens)
    logprobs: np.ndarray  # [B, K, T] float32
    policy_logprobs: np.ndarray  # [B, K, T] float32
    decode_steps: int
    decode_rows_steps: int


@flax.struct.dataclass
class DecodeState:
    """Everything the decode loop carries. Row r is prompt r // K, sample r % K."""

    step: jax.Array  # [] int32: tokens generated so far (column of the next token)
    positions: jax.Array  # [R] int32: RoPE position of the newest token
    row_keys: jax.Array  # [R] PRNG keys, one per row
    tokens: jax.Array  # [R, Tb] int32
    logprobs: jax.Array  # [R, Tb] float32
    policy_logprobs: jax.Array  # [R, Tb] float32
    lengths: jax.Array  # [R] int32
    done: jax.Array  # [R] bool
    stopped_by_eos: jax.Array  # [R] bool
    window: jax.Array  # [R, L] int32: the row's last L tokens (-1: none), for stop sequences


@flax.struct.dataclass
class RefillState:
    """What the refilling decode loop carries. Row r holds sample `sample[r]` (prompt
    sample // K); `sample` = the output's row count marks a row with no sample left."""

    step: jax.Array  # [] int32: decode steps run
    next_sample: jax.Array  # [] int32: the first sample not yet started
    sample: jax.Array  # [R] int32
    t: jax.Array  # [R] int32: tokens its sample has so far
    last: jax.Array  # [R] int32: its newest token (fed at the next step)
    window: jax.Array  # [R, L] int32: its last L tokens (-1: none), for stop sequences
    generated: jax.Array  # [] int32: tokens generated so far, every sample
    out: dict[str, jax.Array]  # per sample: tokens, logprobs, policy_logprobs [N, T]; ...


class Sampler:
    """Samples from a `Transformer` with `params` passed per call (never closed over).

    `mesh`: shard rows over the rules' `batch` axes and heads over `tensor` (the KV cache
    alike); `None` runs on the default device. `heads` must match the params' heads (only
    their shardings depend on it; the heads are not evaluated).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        pad_id: int,
        mesh: Mesh | None = None,
        rules: Rules | None = None,
        heads: tuple[str, ...] = (),
    ) -> None:
        if not 0 <= pad_id < model_config.vocab_size:
            raise ValueError(
                f"pad_id={pad_id} is outside the vocabulary [0, "
                f"{model_config.vocab_size}); pass the tokenizer's pad id"
            )
        self.config = model_config
        self.pad_id = int(pad_id)
        self.mesh = mesh
        self.rules = rules or axis_rules()
        self.heads = tuple(heads)
        self.model = Transformer(model_config, heads=())
        self.compilations: collections.Counter[str] = collections.Counter()
        self._jitted: dict[tuple, Any] = {}
        self._row_multiple = batch_shards(mesh, self.rules)
        if mesh is not None:
            self._param_shardings = logical_shardings(
                param_logical_axes(model_config, self.heads), mesh, self.rules
            )

    @property
    def num_compilations(self) -> int:
        """Programs traced so far (prefill and decode), one per bucket of shapes."""
        return sum(self.compilations.values())

    # ---------------------------------------------------------------- host side

    def sample(
        self,
        params: Any,
        prompts: Prompts,
        cfg: SamplingConfig,
        rng: jax.Array,
        stop_ids: Sequence[Sequence[int]] = (),
        progress: Callable[[int], None] | None = None,
    ) -> SampleOutput:
        """K = `cfg.num_samples` samples for each prompt (see `SampleOutput`).

        `prompts`: a list of token-id lists (ragged), or a pair (ids [B, P], mask [B, P])
        left-padded. `rng`: a JAX key; the same key gives the same samples on any mesh.
        `stop_ids`: token-id sequences that end a sample like an EOS (kept in it).
        `progress`: called now and then from the decode loop with the number of tokens
        generated so far in this call (every sample), e.g. to drive a progress bar.
        """
        ids, mask = validate_prompts(prompts, self.config.vocab_size)
        for e in cfg.eos_ids:
            if not 0 <= e < self.config.vocab_size:
                raise ValueError(
                    f"eos id {e} is outside the vocabulary [0, {self.config.vocab_size})"
                )
        stops = stop_table(stop_ids, self.config.vocab_size)
        b = ids.shape[0]
        longest = int(mask.sum(axis=1).max())
        if longest + cfg.max_new_tokens > self.config.max_seq_len:
            raise ValueError(
                f"prompt of {longest} tokens + max_new_tokens={cfg.max_new_tokens} exceeds "
                f"the model's max_seq_len={self.config.max_seq_len}; shorten the prompt or "
                "generate fewer tokens"
            )
        k = cfg.num_samples
        prompts_bucket = bucket_size(b, cfg.batch_bucket)
        rows_prefill = self._round_rows(prompts_bucket)
        refill_rows = self._round_rows(cfg.decode_rows) if cfg.decode_rows else 0
        plen = bucket_size(ids.shape[1], cfg.prompt_bucket)
        glen = bucket_size(cfg.max_new_tokens, cfg.generation_bucket)
        ids, mask = left_pad(ids, mask, rows_prefill, plen, self.pad_id)
        strategy = Strategy(cfg.greedy, cfg.top_k, cfg.top_p < 1.0)
        kv_dtype = cfg.kv_dtype or self.config.compute_dtype

        prefill = self._program("prefill", rows_prefill, plen, kv_dtype)
        if refill_rows and refill_rows < b * k:
            rows = refill_rows
            decode = self._program(
                "refill", rows_prefill, plen, rows, glen, k, strategy, cfg.eos_ids
            )
        else:
            # Decode rows: K per prompt for the fewest prompts >= the bucket that fill the
            # batch shards, so e.g. 1 prompt x K=96 on 4 batch shards decodes 96 rows, not
            # 384.
            per_shard = self._row_multiple // math.gcd(k, self._row_multiple)
            rows = k * (-(-prompts_bucket // per_shard) * per_shard)
            chunks = chunk_sizes(glen, cfg.decode_chunks)
            decode = self._program(
                "decode", rows_prefill, plen, rows, chunks, k, strategy, cfg.eos_ids
            )
        with self._context(), self._progress(progress):
            if self.mesh is not None:  # every process puts the same prompts: its rows go
                params = jax.device_put(params, self._param_shardings)
                ids, mask = jax.device_put((ids, mask), batch_sharding(self.mesh, 2, self.rules))
            prompt_cache, last_logits = prefill(params, ids, mask)
            out = decode(
                params,
                prompt_cache,
                last_logits,
                np.int32(b * k),
                rng,
                np.float32(cfg.temperature or 1.0),
                np.float32(cfg.top_p),
                np.int32(cfg.max_new_tokens),
                stops,
            )
            out = to_host(out)  # every row, on every process
        t = cfg.max_new_tokens
        shape = lambda x: x[: b * k].reshape(b, k, *x.shape[1:])
        return SampleOutput(
            tokens=shape(out["tokens"][:, :t]),
            lengths=shape(out["lengths"]),
            stopped_by_eos=shape(out["stopped_by_eos"]),
            logprobs=shape(out["logprobs"][:, :t]),
            policy_logprobs=shape(out["policy_logprobs"][:, :t]),
            decode_steps=int(out["step"]),
            decode_rows_steps=rows * int(out["step"]),
        )

    @staticmethod
    @contextlib.contextmanager
    def _progress(hook: Callable[[int], None] | None) -> Any:
        """`hook` receives the decode loops' progress reports while the block runs."""
        if hook is None:
            yield
            return
        _progress_hooks.append(hook)
        try:
            yield
        finally:
            _progress_hooks.remove(hook)

    def _round_rows(self, n: int) -> int:
        return -(-n // self._row_multiple) * self._row_multiple

    def _context(self) -> Any:
        if self.mesh is None:
            return contextlib.nullcontext()
        return activation_sharding(self.mesh, self.rules)

    def _program(self, kind: str, *static: Any) -> Any:
        """The jitted prefill or decode for these static settings (built once, then reused)."""
        key = (kind, *static)
        if key not in self._jitted:
            shard = {}
            if self.mesh is not None:
                rows = lambda ndim: batch_sharding(self.mesh, ndim, self.rules)
                cache = self._prompt_cache_shardings()
                if kind == "prefill":
                    shard = dict(
                        in_shardings=(self._param_shardings, rows(2), rows(2)),
                        out_shardings=(cache, rows(2)),
                    )
                else:
                    rep = replicated(self.mesh)
                    per_sample = rows if kind == "decode" else lambda ndim: rep
                    shard = dict(
                        in_shardings=(self._param_shardings, cache, rows(2), *[rep] * 6),
                        out_shardings={
                            "tokens": per_sample(2),
                            "logprobs": per_sample(2),
                            "policy_logprobs": per_sample(2),
                            "lengths": per_sample(1),
                            "stopped_by_eos": per_sample(1),
                            "step": rep,
                        },
                    )
            fn = {"prefill": self._prefill_fn, "decode": self._decode_fn}.get(kind)
            fn = fn or self._refill_fn
            if kind != "prefill":
                _, _, rows, *_ = static  # rows_prefill, plen, rows, ...
                shard["compiler_options"] = self._decode_compiler_options(rows)
            self._jitted[key] = jax.jit(functools.partial(fn, *static), **shard)
        return self._jitted[key]

    def _decode_compiler_options(self, rows: int) -> dict[str, Any] | None:
        """XLA options for a decode program of `rows` rows: on a CPU with few rows per
        device, Eigen's matmuls instead of YNNPACK's (see `CPU_EIGEN_MAX_ROWS`)."""
        devices = self.mesh.devices.flat if self.mesh is not None else jax.devices()
        if next(iter(devices)).platform != "cpu":
            return None
        if rows // self._row_multiple > CPU_EIGEN_MAX_ROWS:
            return None
        return _cpu_without_ynn()

    def _sharding(self, *logical_axes: str) -> Any:
        return nn.logical_to_mesh_sharding(PartitionSpec(*logical_axes), self.mesh, self.rules)

    def _prompt_cache_shardings(self) -> Any:
        kv = self._sharding(*CACHE_AXES)
        return {"k": kv, "v": kv, "mask": self._sharding("batch", "length")}

    def _constrain_gen(self, x: jax.Array) -> jax.Array:
        """Shard one layer's generated keys or values [R, K, glen, H] like the cache."""
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, self._sharding(*CACHE_AXES[1:]))

    # ---------------------------------------------------------------- jitted side

    def _prefill_fn(
        self, rows: int, plen: int, kv_dtype: str, params: Any, ids: jax.Array, mask: jax.Array
    ) -> tuple[Cache, jax.Array]:
        """The prompt's KV cache {k, v [L, Bp, K, P, H] in `kv_dtype`, mask [Bp, P]} and
        last logits [Bp, V]."""
        self.compilations["prefill"] += 1
        log.info("compiling sampler prefill: prompts=%d prompt_len=%d kv=%s", rows, plen, kv_dtype)
        out = self.model.apply(
            {"params": params},
            ids,
            default_positions(mask),
            mask,
            last_logits_only=True,
            return_kv=True,
        )
        prompt_cache = {name: out.cache[name].astype(kv_dtype) for name in ("k", "v")}
        prompt_cache["mask"] = out.cache["mask"]
        return prompt_cache, out.logits[:, 0]

    def _decode_fn(
        self,
        rows_prefill: int,
        plen: int,
        rows: int,
        chunks: tuple[int, ...],
        k: int,
        strategy: Strategy,
        eos_ids: tuple[int, ...],
        params: Any,
        prompt_cache: Cache,
        last_logits: jax.Array,
        num_live: jax.Array,
        rng: jax.Array,
        temperature: jax.Array,
        top_p: jax.Array,
        max_new_tokens: jax.Array,
        stops: jax.Array,
    ) -> dict[str, jax.Array]:
        self.compilations["decode"] += 1
        log.info(
            "compiling sampler decode: prompts=%d samples=%d rows=%d prompt_len=%d "
            "gen_chunks=%s strategy=%s eos=%s",
            rows_prefill,
            k,
            rows,
            plen,
            chunks,
            strategy,
            eos_ids,
        )
        c = self.config
        row = jnp.arange(rows)
        prompts = rows // k  # row r continues prompt r // k (rows = k * prompts)
        layers = unstack_layers(params)  # sliced once, not at every step
        # Each prompt's cache, computed once, is one segment shared by its K rows.
        prompt_kv = [
            (prompt_cache["k"][i, :prompts], prompt_cache["v"][i, :prompts])
            for i in range(c.num_layers)
        ]
        prompt_mask = prompt_cache["mask"][:prompts]  # [prompts, P]
        glen = sum(chunks)
        rope = rope_table(plen + glen, c)  # every position a row can reach, computed once
        local_rope = rope_table(plen + glen, c, local=True) if c.rope_local_theta else None
        eos = jnp.asarray(eos_ids or (-1,), jnp.int32)

        def sample_and_write(state: DecodeState, logits: jax.Array) -> DecodeState:
            i = state.step
            keys = jax.vmap(jax.random.fold_in, (0, None))(state.row_keys, i)
            s = sample_step(logits, keys, temperature, top_p, strategy)
            live = ~state.done
            tokens = jnp.where(live, s.tokens, self.pad_id)
            hit_eos = live & jnp.isin(tokens, eos)
            window = _push(state.window, tokens)
            _maybe_report(i, jnp.sum(state.lengths + live))
            return state.replace(
                step=i + 1,
                tokens=state.tokens.at[:, i].set(tokens),
                logprobs=state.logprobs.at[:, i].set(jnp.where(live, s.logprobs, 0.0)),
                policy_logprobs=state.policy_logprobs.at[:, i].set(
                    jnp.where(live, s.policy_logprobs, 0.0)
                ),
                lengths=state.lengths + live,
                done=state.done | hit_eos | _hit_stop(window, stops) | (i + 1 >= max_new_tokens),
                stopped_by_eos=state.stopped_by_eos | hit_eos,
                window=window,
            )

        def decode_chunk(state: DecodeState, start: int, size: int, earlier: list) -> Any:
            """Feed tokens start .. start + size - 1 (fewer if every row is done first).

            Their keys go to a fresh chunk of `size` slots per row and layer; `earlier[l]`
            holds layer l's filled chunks, read-only. Returns the state and the chunk.
            """
            empty = jnp.zeros((rows, c.num_kv_heads, size, c.head_dim), prompt_kv[0][0].dtype)
            chunk = tuple((self._constrain_gen(empty),) * 2 for _ in range(c.num_layers))
            full = tuple(jnp.ones((1, s.shape[2]), jnp.bool_) for s, _ in earlier[0])
            window_slots = None
            if c.has_sliding_layers:  # key slots of the prompt, earlier chunks, this chunk
                key_slots, offset = (jnp.arange(plen),), 0
                for s, _ in earlier[0]:
                    key_slots += (plen + offset + jnp.arange(s.shape[2]),)
                    offset += s.shape[2]
                window_slots = (key_slots + (plen + start + jnp.arange(size),), plen)

            def cond(carry: tuple[DecodeState, Any]) -> jax.Array:
                state = carry[0]
                # The loop feeds token step - 1, so it runs while step - 1 is in the chunk.
                in_chunk = state.step < start + size + 1
                return in_chunk & (state.step < max_new_tokens) & ~jnp.all(state.done)

            def body(carry: tuple[DecodeState, Any]) -> tuple[DecodeState, Any]:
                state, chunk = carry
                # Token i = step - 1 is fed: its key and value go to slot i - start of the
                # chunk, written before the layers read slots 0 .. i - start (in place, see
                # `Attention`).
                i = state.step - 1
                last = jax.lax.dynamic_index_in_dim(state.tokens, i, axis=1, keepdims=False)
                filled = (jnp.arange(size) <= i - start)[None, :]
                logits, chunk = decode_step(
                    c,
                    params,
                    layers,
                    last[:, None],
                    state.positions[:, None],
                    [(p, *e, kv) for p, e, kv in zip(prompt_kv, earlier, chunk)],
                    (prompt_mask, *full, filled),
                    append_at=i - start,
                    rope_table=rope,
                    window_slots=window_slots and (window_slots[0], window_slots[1] + i),
                    local_rope_table=local_rope,
                )
                chunk = tuple(tuple(self._constrain_gen(a) for a in kv) for kv in chunk)
                state = state.replace(positions=state.positions + 1)
                return sample_and_write(state, logits), chunk

            return jax.lax.while_loop(cond, body, (state, chunk))

        state = DecodeState(
            step=jnp.zeros((), jnp.int32),
            # The first new token sits right after the row's last real prompt token.
            positions=jnp.repeat(jnp.sum(prompt_mask, axis=1, dtype=jnp.int32), k),
            row_keys=jax.vmap(jax.random.fold_in, (None, 0))(rng, row),
            tokens=jnp.full((rows, glen), self.pad_id, jnp.int32),
            logprobs=jnp.zeros((rows, glen), jnp.float32),
            policy_logprobs=jnp.zeros((rows, glen), jnp.float32),
            lengths=jnp.zeros((rows,), jnp.int32),
            done=row >= num_live,  # dummy rows are finished from the start
            stopped_by_eos=jnp.zeros((rows,), jnp.bool_),
            window=jnp.full((rows, stops.shape[1]), -1, jnp.int32),
        )
        state = sample_and_write(state, jnp.repeat(last_logits[:prompts], k, axis=0))
        # The generated keys live in chunks, one while_loop each: while the first tokens
        # are decoded, no step reads the empty slots of later chunks.
        earlier: list[tuple] = [() for _ in range(c.num_layers)]
        start = 0
        for size in chunks:
            state, chunk = decode_chunk(state, start, size, earlier)
            earlier = [(*e, kv) for e, kv in zip(earlier, chunk)]
            start += size
        return {
            "tokens": state.tokens,
            "logprobs": state.logprobs,
            "policy_logprobs": state.policy_logprobs,
            "lengths": state.lengths,
            "stopped_by_eos": state.stopped_by_eos,
            "step": state.step,
        }

    def _refill_fn(
        self,
        rows_prefill: int,
        plen: int,
        rows: int,
        glen: int,
        k: int,
        strategy: Strategy,
        eos_ids: tuple[int, ...],
        params: Any,
        prompt_cache: Cache,
        last_logits: jax.Array,
        num_live: jax.Array,
        rng: jax.Array,
        temperature: jax.Array,
        top_p: jax.Array,
        max_new_tokens: jax.Array,
        stops: jax.Array,
    ) -> dict[str, jax.Array]:
        """The refilling decode: `rows` rows take the call's `num_live` samples in order,
        a finished row's slot going to the next pending sample (see the module doc)."""
        self.compilations["refill"] += 1
        log.info(
            "compiling sampler refill decode: prompts=%d samples=%d rows=%d prompt_len=%d "
            "gen_len=%d strategy=%s eos=%s",
            rows_prefill,
            k,
            rows,
            plen,
            glen,
            strategy,
            eos_ids,
        )
        c = self.config
        n_out = rows_prefill * k  # output rows; sample index n_out marks an empty row
        layers = unstack_layers(params)
        prompt_kv = [(prompt_cache["k"][i], prompt_cache["v"][i]) for i in range(c.num_layers)]
        prompt_len = jnp.sum(prompt_cache["mask"], axis=1, dtype=jnp.int32)  # [Bp]
        rope = rope_table(plen + glen, c)
        local_rope = rope_table(plen + glen, c, local=True) if c.rope_local_theta else None
        key_slots = (jnp.arange(plen), plen + jnp.arange(glen))
        eos = jnp.asarray(eos_ids or (-1,), jnp.int32)
        slots = jnp.arange(glen)
        kv_dtype = prompt_kv[0][0].dtype

        def body(carry: tuple[RefillState, Any]) -> tuple[RefillState, Any]:
            state, generated_kv = carry
            live = state.sample < num_live
            prompt = jnp.minimum(state.sample // k, rows_prefill - 1)  # [R]
            fresh = state.t == 0  # its first token comes from the prefill's logits
            # Feed the newest token i = t - 1 at slot i, position prompt_len + i (a fresh
            # row feeds nothing real: its output is replaced below, its write overwritten).
            i = jnp.maximum(state.t - 1, 0)
            logits, generated_kv = decode_step(
                c,
                params,
                layers,
                state.last[:, None],
                (prompt_len[prompt] + i)[:, None],
                [((pk[prompt], pv[prompt]), kv) for (pk, pv), kv in zip(prompt_kv, generated_kv)],
                (prompt_cache["mask"][prompt], slots[None, :] <= (state.t - 1)[:, None]),
                append_at=i,
                rope_table=rope,
                window_slots=(key_slots, plen + i) if c.has_sliding_layers else None,
                local_rope_table=local_rope,
            )
            generated_kv = [tuple(self._constrain_gen(a) for a in kv) for kv in generated_kv]
            logits = jnp.where(fresh[:, None], last_logits[prompt], logits)

            keys = jax.vmap(lambda n, t: jax.random.fold_in(jax.random.fold_in(rng, n), t))(
                state.sample, state.t
            )
            s = sample_step(logits, keys, temperature, top_p, strategy)
            tokens = jnp.where(live, s.tokens, self.pad_id)
            window = _push(state.window, tokens)
            hit_eos = live & jnp.isin(tokens, eos)
            ended = live & (hit_eos | _hit_stop(window, stops) | (state.t + 1 >= max_new_tokens))
            at = (state.sample, state.t)  # an empty row's index is out of range: dropped
            out = dict(state.out)
            out["tokens"] = out["tokens"].at[at].set(tokens, mode="drop")
            out["logprobs"] = out["logprobs"].at[at].set(s.logprobs, mode="drop")
            out["policy_logprobs"] = (
                out["policy_logprobs"].at[at].set(s.policy_logprobs, mode="drop")
            )
            out["lengths"] = out["lengths"].at[state.sample].set(state.t + 1, mode="drop")
            out["stopped_by_eos"] = out["stopped_by_eos"].at[state.sample].set(hit_eos, mode="drop")
            # Refill: the ended rows, in row order, take the next pending samples.
            new = state.next_sample + jnp.cumsum(ended) - 1
            new = jnp.where(new < num_live, new, n_out)
            generated = state.generated + jnp.sum(live)
            _maybe_report(state.step, generated)
            state = state.replace(
                step=state.step + 1,
                next_sample=jnp.minimum(state.next_sample + jnp.sum(ended), num_live),
                sample=jnp.where(ended, new, state.sample),
                t=jnp.where(ended, 0, state.t + 1),
                last=tokens,
                window=jnp.where(ended[:, None], -1, window),
                generated=generated,
                out=out,
            )
            return state, generated_kv

        first = jnp.arange(rows)
        empty = jnp.zeros((rows, c.num_kv_heads, glen, c.head_dim), kv_dtype)
        state = RefillState(
            step=jnp.zeros((), jnp.int32),
            next_sample=jnp.minimum(rows, num_live).astype(jnp.int32),
            sample=jnp.where(first < num_live, first, n_out).astype(jnp.int32),
            t=jnp.zeros((rows,), jnp.int32),
            last=jnp.full((rows,), self.pad_id, jnp.int32),
            window=jnp.full((rows, stops.shape[1]), -1, jnp.int32),
            generated=jnp.zeros((), jnp.int32),
            out={
                "tokens": jnp.full((n_out, glen), self.pad_id, jnp.int32),
                "logprobs": jnp.zeros((n_out, glen), jnp.float32),
                "policy_logprobs": jnp.zeros((n_out, glen), jnp.float32),
                "lengths": jnp.zeros((n_out,), jnp.int32),
                "stopped_by_eos": jnp.zeros((n_out,), jnp.bool_),
            },
        )
        generated_kv = [(self._constrain_gen(empty),) * 2 for _ in range(c.num_layers)]
        state, _ = jax.lax.while_loop(
            lambda carry: jnp.any(carry[0].sample < num_live), body, (state, generated_kv)
        )
        return {**state.out, "step": state.step}
