"""`train_experiment` set-up: model overrides, algorithm names."""

import json

import pytest

from jaxrl_reason.experiment import ModelSetup, TaskConfig, train_experiment
from jaxrl_reason.model import ModelConfig

TINY = ModelConfig(
    vocab_size=384, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64
)


def _prepared_run(workdir, task, model, seed=0):
    """A run directory as `train_experiment` leaves it before the first phase: its
    tokenizer and run.json (training nothing)."""
    from jaxrl_reason.experiment import _policy_and_params, _write_run, load_task_data

    train = load_task_data(task, seed).train
    policy, params = _policy_and_params(workdir, task, model, train, (), seed)
    _write_run(workdir, task, policy, ["sft"])
    return policy, params


def test_dtype_and_remat_override_the_model(tmp_path):
    _prepared_run(
        tmp_path,
        TaskConfig(num_train=300, num_eval=4),
        ModelSetup(TINY, tokenizer_vocab_size=384, dtype="bfloat16", remat=True),
    )
    config = json.loads((tmp_path / "run.json").read_text())["model_config"]
    assert (config["dtype"], config["remat"], config["param_dtype"]) == (
        "bfloat16",
        True,
        "float32",
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithms": ("sft", "dpo")}, "'dpo'"),
        ({"algorithms": ("sft", "ppo:heuristic")}, "'ppo:heuristic'"),
        ({"algorithms": ("ppo", "ppo:sparse")}, r"\['ppo_sparse'\] twice"),
    ],
)
def test_unknown_algorithms_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_experiment(tmp_path / "run", show_progress=False, **kwargs)
    assert not (tmp_path / "run").exists()


def test_a_run_json_round_trips_llama3_rope_scaling(tmp_path):
    """An imported Llama-3.1 config (with rope scaling) comes back from run.json whole."""
    from jaxrl_reason.experiment import _policy_from_run
    from jaxrl_reason.model import RopeScaling

    _prepared_run(
        tmp_path,
        TaskConfig(num_train=300, num_eval=4),
        ModelSetup(TINY.replace(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64))),
    )
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["layout"] == 2 and run["phases"] == {}
    config = _policy_from_run(run, tmp_path).model_config
    assert config.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
    assert config == TINY.replace(vocab_size=config.vocab_size, rope_scaling=config.rope_scaling)


def test_a_run_of_the_old_layout_is_refused_untouched(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"task": "arith"}))
    with pytest.raises(ValueError, match=r"older layout \(1, this version writes 2\)"):
        train_experiment(tmp_path, algorithms=("sft",), show_progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert json.loads((tmp_path / "run.json").read_text()) == {"task": "arith"}


def test_eval_of_an_old_layout_run_works_or_says_how_to_rerun(tmp_path):
    """A run written before the one loop: its policies load, except an RCRL one (its prompt
    was not recorded) and its ORM, which are refused with what to do."""
    import jax

    from jaxrl_reason.experiment import _orm_scorer, load_run
    from jaxrl_reason.model import init_params
    from jaxrl_reason.training.checkpointing import save_params

    _prepared_run(
        tmp_path, TaskConfig(num_train=300, num_eval=4), ModelSetup(TINY, tokenizer_vocab_size=384)
    )
    run = json.loads((tmp_path / "run.json").read_text())
    old = {k: v for k, v in run.items() if k not in ("layout", "phases")}
    (tmp_path / "run.json").write_text(json.dumps(old))
    config = TINY.replace(vocab_size=run["model_config"]["vocab_size"])
    params = init_params(config, jax.random.key(0))
    save_params(tmp_path / "policy", params, {"phase": "ei"})
    save_params(tmp_path / "policy", params, {"phase": "rcrl"})
    policy, loaded, meta = load_run(tmp_path, step=0)
    assert meta["phase"] == "ei" and policy.prompt_format.template == "Q: {question}\nA: "
    with pytest.raises(ValueError, match="older jaxrl_reason.*RCRL.*new --workdir"):
        load_run(tmp_path, step=1)
    (tmp_path / "orm" / "orm").mkdir(parents=True)  # where layout 1 kept its ORM
    with pytest.raises(ValueError, match="older jaxrl_reason.*ORM.*new --workdir"):
        _orm_scorer(tmp_path, required=False)


def test_task_splits_are_disjoint_and_the_validation_split_leaves_train_alone():
    from jaxrl_reason.experiment import load_task_data

    plain = load_task_data(TaskConfig(num_train=300, num_eval=20), 0)
    data = load_task_data(
        TaskConfig(num_train=300, num_eval=20, num_val=50, num_sft=100, eval_split="val"), 0
    )
    # Carving a validation split does not change the training questions (arith).
    assert [e.id for e in data.train] == [e.id for e in plain.train]
    assert data.sft == data.train[:100] and len(data.val) == 50 and data.eval == data.val
    questions = [{e.question for e in split} for split in (data.train, data.val, data.test)]
    assert sum(map(len, questions)) == len(set.union(*questions))  # pairwise disjoint
    assert plain.eval == plain.test and plain.sft == plain.train


def test_gsm8k_validation_split_is_the_end_of_the_training_file(shared_data_dir):
    from jaxrl_reason.data.tasks import load_task
    from jaxrl_reason.experiment import load_task_data

    gsm8k = str(shared_data_dir / "gsm8k")
    data = load_task_data(TaskConfig("gsm8k", gsm8k, num_eval=10, num_val=256), 0)
    everything = load_task("gsm8k", "train", data_dir=gsm8k)
    assert data.val == everything[-256:] and data.train == everything[:-256]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eval_split": "val"}, "needs num_val > 0"),
        ({"eval_split": "dev"}, "must be 'test' or 'val'"),
        ({"num_train": 10, "num_sft": 20}, "num_sft \\(20\\) must be <= num_train \\(10\\)"),
        ({"num_val": -1}, "num_val must be >= 0"),
        ({"num_eval": 0}, "num_eval must be > 0 or None"),
    ],
)
def test_bad_task_splits_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig(**kwargs)


def test_a_workdir_is_refused_under_other_splits(tmp_path):
    """Results cached under one split must never be reported under another."""
    from types import SimpleNamespace

    from jaxrl_reason.data.prompts import zero_shot
    from jaxrl_reason.experiment import _write_run

    policy = SimpleNamespace(
        tokenizer=SimpleNamespace(path="tok.model"), model_config=TINY, prompt_format=zero_shot()
    )
    _write_run(tmp_path, TaskConfig(num_val=10, eval_split="val"), policy, ["sft"])
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(ValueError, match="different task_config"):
        _write_run(tmp_path, TaskConfig(num_val=10), policy, ["sft"])
    assert (tmp_path / "run.json").read_text() == before
    _write_run(tmp_path, TaskConfig(num_val=10, eval_split="val"), policy, ["sft", "ei"])
