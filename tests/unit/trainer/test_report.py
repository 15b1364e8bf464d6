"""`agentrl report`: plots, report.md and a self-contained report.html from a run directory.

The run directory is synthetic (pure logic): metrics shaped like `driver.step_metrics`, eval
reports shaped like `eval_job.run_eval`'s, trajectories in the samples.jsonl format.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

from typer.testing import CliRunner

from agentrl.common.cli import app
from agentrl.trainer.report import write_report
from agentrl.trainer.report_plots import PLOTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUM_STEPS = 60


def step_record(step: int) -> dict:
    progress = step / NUM_STEPS
    wobble = 0.08 * math.sin(step * 1.7)  # deterministic noise
    return {
        "step": step,
        "time_unix_s": 1_700_000_000 + 30.0 * step,
        "reward_mean": 0.1 + 0.6 * progress + wobble,
        "reward_std": 0.3,
        "accuracy": min(1.0, max(0.0, 0.15 + 0.6 * progress + wobble)),
        "tool_calls_mean": 0.2 + 1.6 * progress,
        "entropy": 1.2 - 0.7 * progress,
        "response_length_mean": 180 + 120 * progress,
        "response_length_max": 512,
        "clip_frac_low": 0.002 + 0.001 * progress,
        "clip_frac_high": 0.01 - 0.004 * progress,
        "time_waiting_s": 12.0 - 6 * progress,
        "time_training_s": 15.0,
        "time_weight_sync_s": 2.5,
        "time_step_s": 29.5 - 6 * progress,
        "grad_norm": None,  # null values are legal
    }


def eval_report(rates: dict[str, float], tool_calls: int) -> dict:
    def metrics(rate: float) -> dict:
        return {
            "num_prompts": 8,
            "num_samples": 32,
            "num_correct": int(32 * rate),
            "num_solved_prompts": 6,
            "avg_at_k": rate,
            "pass_at_k": min(1.0, rate + 0.2),
            "tool_calls_per_solved": 1.5,
            "mean_response_length_tokens": 210.0,
            "mean_reward": rate,
        }

    groups = [
        {
            "prompt_id": f"{task}-{i}",
            "task_type": task,
            "num_correct": 1,
            "samples": [
                {
                    "verdict": "VERDICT_CORRECT",
                    "reward": 1.0,
                    "num_tool_calls": tool_calls,
                    "response_length_tokens": 200,
                }
            ]
            * 4,
        }
        for task in rates
        for i in range(2)
    ]
    return {
        "data_path": "data/eval.jsonl",
        "num_prompts": 16,
        "k": 4,
        "by_task_type": {task: metrics(rate) for task, rate in rates.items()},
        "overall": metrics(sum(rates.values()) / len(rates)),
        "groups": groups,
    }


def sample(step: int) -> dict:
    return {
        "step": step,
        "prompt_id": f"calc-{step}",
        "prompt": f"What is {step} * 7?",
        "reward": 1.0,
        "correct": True,
        "num_tool_calls": 1,
        "finish_reason": "stop",
        "segments": [
            {"role": "model", "text": f"Let me compute.\n<code>\nprint({step} * 7)\n</code>"},
            {
                "role": "tool",
                "text": f"<output>\n{step * 7}\n<script>x()</script> "
                "see https://example.com\n</output>",
            },
            {"role": "model", "text": f"<answer>{step * 7}</answer>"},
        ],
    }


def make_run(root: Path, records: list[dict] | None = None) -> Path:
    run_dir = root / "run"
    (run_dir / "eval").mkdir(parents=True)
    records = records if records is not None else [step_record(s) for s in range(1, NUM_STEPS + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "eval" / "before.json").write_text(
        json.dumps(eval_report({"math": 0.25, "qa": 0.5}, tool_calls=0))
    )
    (run_dir / "eval" / "after.json").write_text(
        json.dumps(eval_report({"math": 0.625, "qa": 0.75}, tool_calls=2))
    )
    (run_dir / "samples.jsonl").write_text(
        "".join(json.dumps(sample(step)) + "\n" for step in (1, 10, 20, 30, 40, 50))
    )
    (run_dir / "config.json").write_text(
        json.dumps(
            {"run": {"run_id": "quickstart"}, "inference": {"urls": ["http://127.0.0.1:8000"]}}
        )
    )
    return run_dir


def test_every_plot_is_a_png_and_linked_from_the_markdown(tmp_path):
    run_dir = make_run(tmp_path)
    paths = write_report(run_dir)
    assert sorted(p.name for p in paths.plots) == sorted(spec.filename for spec in PLOTS)
    assert len(PLOTS) == 7
    for path in paths.plots:
        assert path.parent == run_dir / "report"
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    markdown = paths.markdown.read_text()
    assert re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown) == [s.filename for s in PLOTS]


def test_a_metric_absent_from_every_record_skips_its_plot_with_a_note(tmp_path):
    records = [step_record(s) for s in range(1, 6)]
    for record in records:
        del record["entropy"]
        record["clip_frac_low"] = record["clip_frac_high"] = None
    paths = write_report(make_run(tmp_path, records))
    assert {p.name for p in paths.plots} == {s.filename for s in PLOTS} - {
        "entropy.png",
        "clip_fraction.png",
    }
    assert not (tmp_path / "run" / "report" / "entropy.png").exists()
    markdown = paths.markdown.read_text()
    assert "No policy entropy plot: no record in metrics.jsonl has entropy." in markdown
    assert "clip_frac_low or clip_frac_high" in markdown


def test_markdown_compares_eval_before_and_after(tmp_path):
    markdown = write_report(make_run(tmp_path)).markdown.read_text()
    rows = {
        line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")
    }
    # avg@4 (accuracy) of each task type and overall, then tool calls per episode from groups.
    assert "0.250 → 0.625 (+0.375)" in rows["math"]
    assert "0.500 → 0.750 (+0.250)" in rows["qa"]
    assert "0.375 → 0.688 (+0.312)" in rows["overall"]
    assert "0.00 → 2.00 (+2.00)" in rows["overall"]
    assert "avg@4" in markdown


def test_the_report_says_after_is_the_last_step_and_where_best_is(tmp_path):
    run_dir = make_run(tmp_path)
    assert "best/" not in write_report(run_dir).markdown.read_text()
    (run_dir / "best").mkdir()
    (run_dir / "best" / "best.json").write_text(
        json.dumps({"step": 4, "eval_avg_at_k": 0.71, "eval_file": "eval/step_00000004.json"})
    )
    markdown = write_report(run_dir).markdown.read_text()
    assert "eval/after.json describes the weights of the last step" in markdown
    assert "held-out avg@k 0.710, step 4, eval/step_00000004.json) are in best/" in markdown


def test_html_is_one_self_contained_page(tmp_path):
    paths = write_report(make_run(tmp_path))
    page = paths.html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page  # the sample's <script> is escaped
    assert "&lt;script&gt;x()&lt;/script&gt;" in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(PLOTS)
    assert base64.b64decode(images[0]).startswith(PNG_SIGNATURE)
    # Tool calls and tool outputs are their own styled blocks; the config is collapsed.
    assert page.count('class="segment call"') == page.count('class="segment tool"') == 4
    assert "<details><summary>config.json</summary>" in page


def test_trajectories_shown_are_the_earliest_and_the_last_three(tmp_path):
    markdown = write_report(make_run(tmp_path)).markdown.read_text()
    shown = re.findall(r"^#### step (\d+) ", markdown, flags=re.MULTILINE)
    assert shown == ["1", "30", "40", "50"]
    assert "**tool call**\n\n```text\n<code>\nprint(50 * 7)\n</code>\n```" in markdown
    assert "**tool output**" in markdown


def test_missing_optional_files_leave_a_note(tmp_path):
    run_dir = make_run(tmp_path)
    (run_dir / "eval" / "after.json").unlink()
    (run_dir / "samples.jsonl").unlink()
    markdown = write_report(run_dir).markdown.read_text()
    assert "No before/after comparison: eval/after.json is missing." in markdown
    assert "No example trajectories: samples.jsonl is missing." in markdown
    assert "0.250" in markdown  # eval/before.json alone is still shown
    (run_dir / "eval" / "before.json").unlink()
    (run_dir / "config.json").unlink()
    markdown = write_report(run_dir).markdown.read_text()
    assert "No evaluation: eval/before.json, eval/after.json, eval.json are missing." in markdown
    assert "No run config: config.json is missing." in markdown


def test_torn_record_is_skipped_and_a_resumed_step_counts_once(tmp_path):
    records = [step_record(s) for s in (1, 2, 3, 2, 3)]  # resumed from step 1's checkpoint
    records[3]["reward_mean"] = 0.9
    run_dir = make_run(tmp_path, records)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, '{"step": 3, "time_unix_s": 17')  # killed mid-write, then resumed
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    markdown = write_report(run_dir).markdown.read_text()
    assert "3 optimizer steps (1–3)" in markdown
    assert "1 torn record(s) in metrics.jsonl" in markdown


def run_cli(*args: str):
    return CliRunner().invoke(app, ["report", *args])


def test_cli_prints_the_paths_it_wrote(tmp_path):
    run_dir = make_run(tmp_path)
    result = run_cli(str(run_dir))
    assert result.exit_code == 0, result.output
    printed = result.stdout.split()
    assert printed[-2:] == [
        str(run_dir / "report" / "report.md"),
        str(run_dir / "report" / "report.html"),
    ]
    assert len(printed) == len(PLOTS) + 2


def test_cli_bad_input_is_a_clear_error_without_traceback(tmp_path):
    missing = tmp_path / "no-such-run"
    result = run_cli(str(missing))
    assert result.exit_code == 1
    assert f"run directory {missing} does not exist" in result.stderr
    assert isinstance(result.exception, SystemExit)  # a handled exit, not a crash

    (tmp_path / "empty").mkdir()
    result = run_cli(str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'empty' / 'metrics.jsonl'} is missing" in result.stderr

    run_dir = make_run(tmp_path)
    with (run_dir / "metrics.jsonl").open("a") as metrics:
        metrics.write("not json at all\n")
    result = run_cli(str(run_dir))
    assert result.exit_code == 1
    assert f"{run_dir / 'metrics.jsonl'}, line {NUM_STEPS + 1} is not JSON" in result.stderr
    assert isinstance(result.exception, SystemExit)
