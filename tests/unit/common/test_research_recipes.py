"""The research recipes (recipes/research/): each validates, holds the settings of the research it
reproduces (ALGORITHMS.md §1-§6), and those settings reach the tasks, the samplers and the reward
that a run would use. The recipes target a cluster; nothing here talks to one."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from agentrl.common.agent.loop import EpisodeSettings
from agentrl.common.config import AgentRLConfig, ARPOConfig, load_config
from agentrl.common.tool_formats import get_format
from agentrl.reward.shaping import shape
from agentrl.reward.verifier import CORRECT, FORMAT_ERROR, INCORRECT, Verification
from agentrl.trainer.data import PromptRow
from agentrl.trainer.rl_loop import make_task

REPO = Path(__file__).resolve().parents[3]
RESEARCH = REPO / "recipes" / "research"
RECIPES = ("open_agentrl_grpo_tcr.yaml", "arpo_search_python.yaml", "search_r1.yaml")
# Where helm/agentrl and deploy/k8s mount the shared volume.
SHARED_VOLUME = Path("/var/lib/agentrl")


def research(name: str) -> AgentRLConfig:
    return load_config(RESEARCH / name, env={})


class WordTokenizer:
    """One token per word; no chat template, so prompts render as plain text."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(input_ids=list(range(len(text.split()))))


def task_of(config: AgentRLConfig, prompt: str = "What is 6 * 7 ?"):
    row = PromptRow(
        prompt_id="p0", prompt=prompt, ground_truth="42", task_type="math", tools=("python",)
    )
    return make_task(row, config, WordTokenizer(), key="run:0:0", version=0)


def test_every_research_recipe_validates_and_is_tested():
    assert sorted(p.name for p in RESEARCH.glob("*.yaml")) == sorted(RECIPES)
    for name in RECIPES:
        research(name)


@pytest.mark.parametrize("name", RECIPES)
def test_addresses_are_the_deployment_names_and_paths_on_the_shared_volume(name):
    config = research(name)
    deployed = load_config(REPO / "deploy" / "k8s" / "base" / "recipe.yaml", env={})
    raw = yaml.safe_load((RESEARCH / name).read_text())
    assert config.redis.url == deployed.redis.url
    for service in ("sandbox", "reward", "search"):
        if "address" in raw.get(service, {}):
            assert getattr(config, service).address == getattr(deployed, service).address
    paths = [
        config.run.output_dir,
        config.model.path,
        config.data.train_path,
        config.data.eval_path,
    ]
    assert all(path.is_relative_to(SHARED_VOLUME) for path in paths), paths
    assert config.search.index_dir == deployed.search.index_dir or "search" not in raw


def test_open_agentrl_grpo_tcr_holds_the_paper_settings():
    config = research("open_agentrl_grpo_tcr.yaml")
    algorithm = config.algorithm
    assert algorithm.advantage == "grpo" and algorithm.kl_coef == 0.0
    assert (algorithm.clip_low, algorithm.clip_high, algorithm.dual_clip) == (0.2, 0.28, 10.0)
    assert algorithm.loss_agg == "token-mean" and algorithm.entropy_coef == 0.0
    assert algorithm.learning_rate == 1e-6
    assert (config.trainer.batch_size, algorithm.group_size) == (64, 16)
    rollout = config.rollout
    assert (rollout.max_turns, rollout.max_response_tokens) == (16, 20480)
    assert rollout.tool_format == "code_tags" and not rollout.tree_sampling
    reward = config.reward
    assert (reward.overlong.max_length_tokens, reward.overlong.buffer_tokens) == (20480, 4096)
    assert reward.overlong.enabled and reward.tool_shaping.enabled
    assert reward.code.reward_mode == "all_pass"
    assert rollout.tool_timeout_s == 30.0
    assert (
        config.sandbox.backend,
        config.sandbox.default_timeout_s,
        config.sandbox.default_memory_mb,
    ) == ("docker", 30.0, 2048)
    assert config.sft.train_path is not None  # the cold start on real trajectories (§6)


def test_open_agentrl_limits_reach_the_task_and_the_episode():
    config = research("open_agentrl_grpo_tcr.yaml")
    task = task_of(config)
    prompt_length = len(task.prompt_token_ids)
    assert prompt_length > 0
    assert (task.num_samples, task.limits.max_turns, task.limits.max_tool_calls) == (16, 16, 16)
    assert task.limits.max_total_tokens == prompt_length + 20480
    assert task.sampling.max_tokens_per_turn == 20480 and not task.tree_sampling
    episode = EpisodeSettings.from_task(task)
    assert (episode.max_turns, episode.max_tool_calls) == (16, 16)
    assert episode.max_total_tokens - prompt_length == 20480
    assert episode.tool_format == "code_tags"


def test_open_agentrl_reward_shapes_wrong_answers_by_tool_calls_and_long_responses():
    settings = research("open_agentrl_grpo_tcr.yaml").reward
    wrong = Verification(INCORRECT, 0.0, "wrong")
    assert shape(wrong, settings, length_tokens=100, num_tool_calls=3).reward == pytest.approx(-0.7)
    assert shape(wrong, settings, length_tokens=100, num_tool_calls=9).reward == pytest.approx(-0.6)
    right = Verification(CORRECT, 1.0, "right")
    # Halfway into the 4096-token buffer before 20480: half the penalty.
    assert shape(
        right, settings, length_tokens=20480 - 2048, num_tool_calls=0
    ).reward == pytest.approx(0.5)


def test_unset_limits_stay_the_rollout_defaults():
    # An engine context above the default episode budget (4096): nothing to cap.
    task = task_of(AgentRLConfig(inference={"server": {"max_model_len": 8192}}))
    assert (
        task.limits.max_turns,
        task.limits.max_tool_calls,
        task.limits.max_total_tokens,
        task.sampling.max_tokens_per_turn,
    ) == (0, 0, 0, 0)
    assert not task.tree_sampling
    episode = EpisodeSettings.from_task(task)
    assert (episode.max_turns, episode.max_total_tokens, episode.max_tokens_per_turn) == (
        8,
        4096,
        512,
    )


def test_arpo_holds_the_tree_sampling_settings_and_switches_tasks_to_trees():
    config = research("arpo_search_python.yaml")
    assert config.rollout.arpo == ARPOConfig(
        initial_samples=8, entropy_tokens=20, top_logprobs=10, beta=0.2, tau=0.5, beam_size=2
    )
    assert config.algorithm.group_size == 16  # the budget M
    assert config.rollout.tool_format == "hermes"  # one format names both tools
    task = task_of(config)
    assert task.tree_sampling and task.num_samples == 16
    assert task.limits.max_total_tokens == len(task.prompt_token_ids) + 8192
    assert config.reward.overlong.max_length_tokens == config.rollout.max_response_tokens


def test_search_r1_uses_its_tags_top3_and_an_exact_match_reward_behind_a_format_gate():
    config = research("search_r1.yaml")
    fmt = get_format(config.rollout.tool_format)
    assert fmt.tags == (("<search>", "</search>"),) and fmt.tool == "search"
    assert (fmt.observation_open, fmt.observation_close) == ("<information>", "</information>")
    assert "</answer>" in fmt.stop_strings
    assert config.search.default_top_k == 3
    assert config.reward.qa_metric == "em" and "qa" in config.reward.format_gate_task_types
    settings = config.reward
    long_response = 30_000  # no overlong penalty: the reward is EM and the gate alone
    assert shape(Verification(CORRECT, 1.0, ""), settings, long_response, 2).reward == 1.0
    assert shape(Verification(INCORRECT, 0.0, ""), settings, long_response, 2).reward == 0.0
    assert shape(Verification(FORMAT_ERROR, 0.0, ""), settings, 10, 0).reward == -1.0


@pytest.mark.parametrize("response_budget", [None, 60])
def test_an_episode_budget_never_passes_the_engines_context(response_budget):
    # The default budget (4096 in all) or prompt + max_response_tokens, above a 64-token context.
    # The default context (4096) caps the default budget too: 4095.
    assert task_of(AgentRLConfig()).limits.max_total_tokens == 4095
    config = AgentRLConfig(
        inference={"server": {"max_model_len": 64}},
        rollout={"max_response_tokens": response_budget},
    )
    task = task_of(config, prompt="a prompt of eight words, as long as this")
    # One token below: scoring the whole episode asks the engine for one more token.
    assert task.limits.max_total_tokens == 63
    assert EpisodeSettings.from_task(task).max_total_tokens == 63
    # Within the context nothing changes: prompt + budget, or 0 (the rollout default).
    roomy = task_of(
        AgentRLConfig(
            inference={"server": {"max_model_len": 8192}},
            rollout={"max_response_tokens": response_budget},
        )
    )
    prompt_length = len(roomy.prompt_token_ids)
    assert roomy.limits.max_total_tokens == (
        prompt_length + response_budget if response_budget else 0
    )
