"""gin wiring: config files parse into valid models and meshes; errors name file and line."""

import math
import pathlib
import re

import flax.linen as nn
import gin
import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl_reason import configuration
from jaxrl_reason.model import (
    PRESETS,
    ModelConfig,
    init_params,
    model_config,
    param_logical_axes,
)
from jaxrl_reason.parallel import DEFAULT_RULES, MESH_AXES, axis_rules, make_mesh

CONFIGS = configuration.CONFIGS_DIR
MODEL_FILES = sorted((CONFIGS / "model").glob("*.gin"))
PARALLEL_FILES = sorted((CONFIGS / "parallel").glob("*.gin"))
# Devices each parallel config is written for (None: any count, e.g. CPU).
DEVICES = {"cpu": None, "gpu_1": 1, "tpu_v4_32": 16, "tpu_v5e_256": 256}
# Model presets each pod config must shard evenly.
POD_MODELS = {
    "tpu_v4_32": ("llama2_7b", "llama2_13b", "llama3_8b"),
    "tpu_v5e_256": ("llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b"),
}


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _mesh_shape(devices: int) -> dict[str, int]:
    """The mesh the bound `make_mesh` sizes give on `devices` devices (-1 takes the rest)."""
    sizes = {a: gin.query_parameter(f"make_mesh.{a}") for a in MESH_AXES}
    fixed = math.prod(s for s in sizes.values() if s != -1)
    return {a: devices // fixed if s == -1 else s for a, s in sizes.items()}


def test_config_dirs_are_complete():
    assert {p.stem for p in MODEL_FILES} == set(PRESETS)
    assert {p.stem for p in PARALLEL_FILES} == set(DEVICES)


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_files_give_their_preset(path: pathlib.Path):
    configuration.parse_config([f"model/{path.name}"])
    config = model_config()
    assert isinstance(config, ModelConfig)
    assert gin.query_parameter("model_config.preset") == path.stem
    # Same shapes as the Python preset; a file may only add memory/speed switches.
    expected = PRESETS[path.stem]()
    assert config.replace(remat=expected.remat) == expected


@pytest.mark.parametrize("path", PARALLEL_FILES, ids=lambda p: p.stem)
def test_parallel_files_give_valid_meshes(path: pathlib.Path):
    configuration.parse_config([str(path)])  # an absolute path works too
    devices = DEVICES[path.stem]
    shape = _mesh_shape(devices or jax.device_count())
    assert math.prod(shape.values()) == (devices or jax.device_count())
    rules = axis_rules()
    assert {m for _, ms in rules for m in ((ms,) if isinstance(ms, str) else ms or ())} <= set(
        MESH_AXES
    )
    if devices is None or devices <= jax.device_count():
        mesh = make_mesh(devices=jax.devices()[: devices or jax.device_count()])
        assert dict(mesh.shape) == shape
    for preset in POD_MODELS.get(path.stem, ()):
        _assert_divisible(PRESETS[preset](), rules, shape, f"{preset} on {path.stem}")


def _assert_divisible(config: ModelConfig, rules, shape: dict[str, int], what: str) -> None:
    """Every sharded parameter dimension divides evenly by its mesh axes."""
    logical = param_logical_axes(config, heads=("value",))
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), heads=("value",)))
    flat_specs = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
    flat_shapes = jax.tree.leaves(shapes)
    assert len(flat_specs) == len(flat_shapes)
    for spec, leaf in zip(flat_specs, flat_shapes):
        mesh_spec = nn.logical_to_mesh_axes(spec, rules)
        for dim, axes in zip(leaf.shape, tuple(mesh_spec) + (None,) * leaf.ndim):
            axes = (axes,) if isinstance(axes, str) else axes or ()
            n = math.prod(shape[a] for a in axes)
            assert dim % n == 0, f"{what}: dim {dim} of {leaf.shape} not divisible by {axes}"


def test_v5e_rules_equal_defaults():
    configuration.parse_config(["parallel/tpu_v5e_256.gin"])
    assert axis_rules() == DEFAULT_RULES


def test_include_and_bindings_compose(tmp_path: pathlib.Path):
    experiment = tmp_path / "exp.gin"
    experiment.write_text(
        'include "model/tiny.gin"\ninclude "parallel/cpu.gin"\nmodel_config.num_layers = 2\n'
    )
    configuration.parse_config([str(experiment)], ["model_config.d_model = 128"])
    config = model_config()
    assert (config.num_layers, config.d_model, config.vocab_size) == (2, 128, 1024)
    assert gin.query_parameter("make_mesh.data") == -1


def _error(tmp_path, text: str, bindings=()) -> str:
    path = tmp_path / "bad.gin"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        configuration.parse_config([str(path)], bindings)
    return str(info.value)


@pytest.mark.parametrize(
    "text, line",
    [
        ('include "model/tiny.gin"\n\nno_such_thing.x = 3\n', 3),  # unknown configurable
        (
            "import jaxrl_reason.model.config\nmodel_config.preset = 'tiny'\nmodel_config.( = 1\n",
            3,
        ),  # syntax error
        ('\ninclude "model/none.gin"\n', 2),  # missing include
    ],
    ids=["unknown", "syntax", "include"],
)
def test_errors_name_file_and_line(tmp_path, text: str, line: int):
    message = _error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'bad.gin'}, line {line}:"), message
    if "none.gin" in text:
        assert "'model/none.gin' not found" in message, message


def test_error_in_included_file_names_that_file(tmp_path):
    (tmp_path / "inner.gin").write_text("model_config.preset = 'tiny'\nmodel_config.x = (\n")
    (tmp_path / "outer.gin").write_text('\ninclude "inner.gin"\n')
    with pytest.raises(ValueError) as info:
        configuration.parse_config(["outer.gin"], search_paths=[str(tmp_path)])
    message = str(info.value)
    assert str(tmp_path / "inner.gin") in message and "line" in message, message
    assert str(tmp_path / "outer.gin") in message, message


def test_bad_binding_names_the_binding():
    with pytest.raises(ValueError, match=r"gin binding #1 'nothing_here.x = 1', line 1"):
        configuration.parse_config(
            ["model/tiny.gin"], ["model_config.num_layers = 2", "nothing_here.x = 1"]
        )


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n\n  # and another\n"])
def test_a_file_that_binds_nothing_is_refused(tmp_path, text):
    path = tmp_path / "empty.gin"
    path.write_text(text)
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))} binds nothing .*jaxrl-reason demo"
    ):
        configuration.parse_config([str(path)])
    path.write_text(text + "model_config.num_layers = 2  # one binding is enough\n")
    configuration.parse_config([str(path)])


def test_missing_file_is_a_value_error():
    with pytest.raises(ValueError, match="model/nope.gin.*not found"):
        configuration.parse_config(["model/nope.gin"])


def test_write_resolved_config_roundtrips(tmp_path: pathlib.Path):
    configuration.parse_config(["model/small_50m.gin"], ["model_config.num_layers = 3"])
    before = configuration.write_resolved_config(tmp_path / "run")  # nothing ran yet
    assert before == tmp_path / "run" / "config.gin"
    assert "num_layers = 3" in before.read_text()
    config = model_config()
    path = configuration.write_resolved_config(tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.gin"]  # no temp left
    # The written file alone rebuilds the same model.
    configuration.parse_config([str(path)])
    assert model_config() == config
