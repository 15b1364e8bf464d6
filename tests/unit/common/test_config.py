"""Config: recipe + environment layering, and an error that names the field for each mistake."""

from pathlib import Path

import pytest

from agentrl.common.config import (
    MOVED_KEYS,
    AgentRLConfig,
    ConfigError,
    describe_fields,
    dump_config,
    load_config,
)

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def issues_of(recipe: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(recipe, env=env or {})
    return {issue.path: issue.message for issue in info.value.issues}


def test_defaults_follow_the_algorithm_doc():
    config = AgentRLConfig()
    assert (config.algorithm.clip_low, config.algorithm.clip_high) == (0.2, 0.28)
    assert config.algorithm.loss_agg == "token-mean"
    assert config.trainer.max_staleness == 4
    assert config.sandbox.host == "127.0.0.1"  # services bind to loopback unless told otherwise


def test_shipped_recipes_validate():
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        load_config(recipe, env={})


def test_recipe_then_environment_layering(tmp_path):
    recipe = write(tmp_path, "sandbox:\n  backend: docker\n  max_concurrency: 3\n")
    config = load_config(
        recipe,
        env={
            "AGENTRL__SANDBOX__MAX_CONCURRENCY": "12",
            "AGENTRL__INFERENCE__URLS": "[http://a:1, http://b:2]",
            "UNRELATED": "x",
        },
    )
    assert config.sandbox.backend == "docker"  # from the recipe
    assert config.sandbox.max_concurrency == 12  # environment wins
    assert config.inference.urls == ["http://a:1", "http://b:2"]
    assert load_config(dump_and_write(tmp_path, config), env={}) == config


def test_environment_reaches_a_field_of_a_sub_section(tmp_path):
    recipe = write(
        tmp_path,
        "inference:\n  server:\n    dtype: bfloat16\n    max_model_len: 1024\n"
        "rollout:\n  arpo:\n    beam_size: 3\n",
    )
    config = load_config(
        recipe,
        env={
            "AGENTRL__INFERENCE__SERVER__MAX_MODEL_LEN": "2048",
            "AGENTRL__ROLLOUT__ARPO__TAU": "1",
        },
    )
    assert config.inference.server.max_model_len == 2048  # environment wins
    assert config.inference.server.dtype == "bfloat16"  # the recipe's sibling key stays
    assert (config.rollout.arpo.tau, config.rollout.arpo.beam_size) == (1.0, 3)
    issues = issues_of(recipe, env={"AGENTRL__REWARD__OVERLONG__BUFFER_TOKENS": "-1"})
    assert "greater than 0" in issues["reward.overlong.buffer_tokens"]


def test_a_moved_flat_key_names_its_new_place(tmp_path):
    recipe = write(
        tmp_path,
        "rollout:\n  vllm_max_model_len: 1024\n"
        "  inference_urls: [http://a:1]\nreward:\n  code_max_tests: 5\n",
    )
    issues = issues_of(recipe, env={"AGENTRL__REWARD__OVERLONG_ENABLED": "false"})
    assert issues["rollout.vllm_max_model_len"] == (
        "unknown key; moved to inference.server.max_model_len"
    )
    assert "moved to inference.urls" in issues["rollout.inference_urls"]
    assert "moved to reward.code.max_tests" in issues["reward.code_max_tests"]
    assert issues["reward.overlong_enabled"] == (
        "unknown key; moved to reward.overlong.enabled (env AGENTRL__REWARD__OVERLONG__ENABLED)"
    )


def test_every_moved_key_points_at_a_field_and_is_no_field_itself():
    fields = {row.path for row in describe_fields()}
    assert len(MOVED_KEYS) == 30
    for old, new in MOVED_KEYS.items():
        assert new in fields and old not in fields, (old, new)


def test_config_show_lists_every_section_sub_section_and_optional_one():
    everything = {row.path: row for row in describe_fields()}
    assert everything["model"].type == "section"  # `ModelConfig | None` is a section too
    assert everything["model.path"].default == "(required)"
    assert "Context length" in everything["inference.server.max_model_len"].help
    server = describe_fields("inference.server")
    assert [row.path for row in server][:2] == [
        "inference.server.model_path",
        "inference.server.max_model_len",
    ]
    assert [row.path for row in describe_fields("data")] == ["data.train_path", "data.eval_path"]
    assert describe_fields("rollout.arpo.tau")[0].default == "0.5"
    with pytest.raises(ValueError, match="one of: .*inference.server"):
        describe_fields("inference.sever")


def dump_and_write(tmp_path: Path, config: AgentRLConfig) -> Path:
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    return path


def test_missing_field_is_named(tmp_path):
    issues = issues_of(write(tmp_path, "model:\n  dtype: bfloat16\n"))
    assert "missing" in issues["model.path"]
    assert "checkpoint" in issues["model.path"]  # the field's help text says what it is


def test_null_for_a_required_value_is_named(tmp_path):
    issues = issues_of(write(tmp_path, "run:\n  run_id:\n"))
    assert "None" in issues["run.run_id"]


def test_wrong_type_is_named_with_the_bad_value(tmp_path):
    issues = issues_of(write(tmp_path, "trainer:\n  batch_size: lots\n"))
    assert "lots" in issues["trainer.batch_size"]
    assert "integer" in issues["trainer.batch_size"]


def test_unknown_key_suggests_the_close_one(tmp_path):
    issues = issues_of(write(tmp_path, "sandbox:\n  backnd: docker\n"))
    assert "did you mean `backend`" in issues["sandbox.backnd"]


def test_unknown_section_is_named(tmp_path):
    issues = issues_of(write(tmp_path, "sandbx: {}\n"))
    assert "did you mean `sandbox`" in issues["sandbx"]


def test_bad_enum_lists_the_choices(tmp_path):
    issues = issues_of(write(tmp_path, "sandbox:\n  backend: firecracker\n"))
    assert "'bwrap'" in issues["sandbox.backend"] and "'docker'" in issues["sandbox.backend"]


def test_every_error_is_reported_at_once_with_its_source(tmp_path):
    recipe = write(tmp_path, "trainer:\n  batch_size: 0\nalgorithm:\n  advantage: ppo\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe, env={"AGENTRL__SANDBOX__DEFAULT_TIMEOUT_S": "-1"})
    by_path = {i.path: i for i in info.value.issues}
    assert set(by_path) == {
        "trainer.batch_size",
        "algorithm.advantage",
        "sandbox.default_timeout_s",
    }
    assert by_path["sandbox.default_timeout_s"].source == "env AGENTRL__SANDBOX__DEFAULT_TIMEOUT_S"
    assert by_path["trainer.batch_size"].source == str(recipe)


def test_bad_yaml_gives_the_line(tmp_path):
    issues = issues_of(write(tmp_path, "sandbox:\n  backend: [docker\n"))
    assert "line" in issues["(file)"]


def test_missing_recipe_file(tmp_path):
    issues = issues_of(tmp_path / "nope.yaml")
    assert "not found" in issues["(file)"]


def test_a_setting_naming_something_not_built_fails_validation_with_the_fix(tmp_path):
    issues = issues_of(
        write(
            tmp_path,
            "trainer:\n  weight_transport: vllm\n"
            "inference:\n  weight_transfer_backend: nccl\n"
            "algorithm:\n  kl_coef: 0.1\n",
        )
    )
    assert "'nccl' is not built" in issues["(recipe)"]
    assert "use trainer.weight_transport: disk" in issues["(recipe)"]
    assert "algorithm.kl_coef" not in issues  # the reference policy is built (reference.py)


@pytest.mark.parametrize(
    "engine,fix",
    [("nccl", "use trainer.weight_transport: disk"), ("none", "set it to 'agentrl_gloo'")],
)
def test_the_native_transport_needs_the_engine_it_drives(tmp_path, engine, fix):
    recipe = write(tmp_path, f"inference:\n  weight_transfer_backend: {engine}\n")
    issues = issues_of(recipe)
    assert list(issues) == ["(recipe)"] and fix in issues["(recipe)"]
    assert "Value error" not in issues["(recipe)"]
    # The disk transport needs no engine.
    load_config(recipe, env={"AGENTRL__TRAINER__WEIGHT_TRANSPORT": "disk"})


def test_a_check_of_a_whole_section_reads_without_pydantics_prefix(tmp_path):
    issues = issues_of(write(tmp_path, "algorithm:\n  clip_low: 0.3\n  clip_high: 0.2\n"))
    assert issues["algorithm"].startswith("clip_high (0.2) must be >= clip_low (0.3)")


def test_a_response_budget_the_engine_cannot_hold_is_refused_with_the_fix(tmp_path):
    recipe = write(tmp_path, "rollout:\n  max_response_tokens: 4096\n")  # the default context
    issues = issues_of(recipe)
    assert list(issues) == ["(recipe)"]
    assert "raise inference.server.max_model_len" in issues["(recipe)"]
    assert "or lower rollout.max_response_tokens" in issues["(recipe)"]
    load_config(recipe, env={"AGENTRL__INFERENCE__SERVER__MAX_MODEL_LEN": "8192"})
