"""`agentrl report RUN_DIR`: a training run directory as plots (PNG), report.md and report.html.

    paths = write_report(Path("runs/local"))   # RUN_DIR/report/: *.png, report.md, report.html

| file in RUN_DIR | written by | becomes |
|---|---|---|
| `metrics.jsonl` (required) | `metrics.StepMetricsWriter` | a summary table, one plot per `PLOTS` entry |
| `eval/before.json`, `eval/after.json`, `eval.json` | `eval_job.run_eval` | evaluation tables, before vs after |
| `samples.jsonl` | the run's trajectory samples | the earliest trajectory and the last three |
| `config.json` | the resolved run config | collapsed (HTML), fenced (Markdown) |

A missing optional file leaves its section out with a one-line note naming it; a metric absent
from every record leaves its plot out the same way. report.html is one self-contained file: the
PNGs are base64 data URIs and the CSS is inline, nothing is fetched. Plots are matplotlib
`Figure`s rendered by Agg (no display, no pyplot state). Bad input (no RUN_DIR, no
metrics.jsonl, a line or file that is not JSON) raises `ReportInputError` naming the file.
The sections are built once as blocks (`Heading`, `Note`, `Table`, ...) and rendered twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.trainer.metrics import METRICS_FILE
from agentrl.trainer.report_render import (
    Code,
    Heading,
    Image,
    Note,
    Table,
    Trajectory,
    render_html,
    render_markdown,
)

REPORT_DIR = "report"
EVAL_FILES = {"before": "eval/before.json", "after": "eval/after.json", "eval": "eval.json"}
SAMPLES_FILE, CONFIG_FILE = "samples.jsonl", "config.json"
# Trajectories shown: the earliest one (what the policy did before learning) and the latest.
NUM_LATEST_SAMPLES = 3
# Summary "start" / "end": the mean over this share of the first / last steps (at least one).
SUMMARY_WINDOW_FRACTION = 0.1
SUMMARY_METRICS = (
    ("reward_mean", "reward", 3),
    ("accuracy", "accuracy", 3),
    ("tool_calls_mean", "tool calls / episode", 2),
    ("entropy", "entropy", 3),
    ("response_length_mean", "response tokens", 1),
    ("time_step_s", "step time (s)", 2),
)
# Evaluation columns: (metric, header, digits); "{k}" becomes the report's k.
EVAL_COLUMNS = (
    ("avg_at_k", "avg@{k}", 3),
    ("pass_at_k", "pass@{k}", 3),
    ("tool_calls_per_episode", "tool calls / episode", 2),
    ("tool_calls_per_solved", "tool calls / solved", 2),
    ("mean_response_length_tokens", "response tokens", 1),
    ("mean_reward", "reward", 3),
)


class ReportInputError(ValueError):
    """RUN_DIR or one of its files cannot be read; the message names the file and the fix."""


@dataclass
class ReportPaths:
    plots: list[Path]
    markdown: Path
    html: Path


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path} is not valid JSON ({exc}); {fix}") from None


def read_jsonl(path: Path, fix: str) -> tuple[list[dict[str, Any]], int]:
    """(records, number of torn records skipped). A torn record, the start of a record cut off
    by a kill (StepMetricsWriter resumes on the next line), is skipped; any other line that is
    not a JSON object is an error naming the file and line."""
    records, num_torn = [], 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if line.startswith('{"step": '):
                num_torn += 1
                continue
            raise ReportInputError(
                f"{path}, line {number} is not JSON ({exc.msg}); {fix}"
            ) from None
        if not isinstance(record, dict):
            raise ReportInputError(f"{path}, line {number} is not a JSON object; {fix}")
        records.append(record)
    return records, num_torn


def load_step_records(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's step records sorted by step (a step re-done after a resume: the later record
    counts) and notes on what was skipped."""
    if not run_dir.is_dir():
        problem = "is not a directory" if run_dir.exists() else "does not exist"
        raise ReportInputError(
            f"run directory {run_dir} {problem}: pass the directory a "
            f"training run wrote (run.output_dir, the one with {METRICS_FILE})"
        )
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ReportInputError(
            f"{path} is missing: {run_dir} is not a training run directory "
            "(pass the run.output_dir of a run that finished a step)"
        )
    fix = "fix or delete that line (each line is one step's record)"
    records, num_torn = read_jsonl(path, fix)
    by_step: dict[int, dict[str, Any]] = {}
    for record in records:
        if not isinstance(record.get("step"), int):
            raise ReportInputError(
                f"{path}: a record has no integer 'step': {str(record)[:80]}; {fix}"
            )
        by_step[record["step"]] = record
    if not by_step:
        raise ReportInputError(f"{path} has no step records: run at least one training step")
    notes = (
        [f"{num_torn} torn record(s) in {METRICS_FILE} (a run killed mid-write) skipped."]
        if num_torn
        else []
    )
    return [by_step[step] for step in sorted(by_step)], notes


def number(value: Any) -> float | None:
    """A metric value as a float; None for null, strings and booleans."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary_blocks(run_dir: Path, records: list[dict[str, Any]]) -> list:
    steps = [r["step"] for r in records]
    times = [t for t in (number(r.get("time_unix_s")) for r in records) if t is not None]
    span = f", {(max(times) - min(times)) / 60:.1f} min wall clock" if len(times) > 1 else ""
    window = max(1, int(len(records) * SUMMARY_WINDOW_FRACTION))
    rows = []
    for key, label, digits in SUMMARY_METRICS:
        values = [v for v in (number(r.get(key)) for r in records) if v is not None]
        if values:
            start, end = _mean(values[:window]), _mean(values[-window:])
            rows.append([label, fmt(start, digits), fmt(end, digits), f"{end - start:+.{digits}f}"])
    return [
        Heading("Summary"),
        Note(
            f"{run_dir}: {len(records)} optimizer steps ({steps[0]}–{steps[-1]}){span}. "
            f"Start / end: mean over the first / last {window} step(s).",
            kind="info",
        ),
        Table(["metric", "start", "end", "change"], rows),
    ]


def with_tool_calls_per_episode(report: dict[str, Any]) -> dict[str, Any]:
    """The eval report with `tool_calls_per_episode` (every sample, solved or not) per task
    type and overall, computed from its per-prompt `groups` when the JSON holds them."""
    by_type: dict[str, list[float]] = {}
    for group in report.get("groups") or []:
        calls = [number(s.get("num_tool_calls")) for s in group.get("samples", [])]
        by_type.setdefault(group.get("task_type") or "unknown", []).extend(
            c for c in calls if c is not None
        )
    by_type_metrics = {name: dict(m) for name, m in (report.get("by_task_type") or {}).items()}
    overall = dict(report.get("overall") or {})
    for name, metrics in by_type_metrics.items():
        metrics.setdefault("tool_calls_per_episode", _mean(by_type.get(name, [])))
    overall.setdefault("tool_calls_per_episode", _mean([c for v in by_type.values() for c in v]))
    return {**report, "by_task_type": by_type_metrics, "overall": overall}


def eval_table(before: dict[str, Any] | None, after: dict[str, Any]) -> Table:
    """One row per task type and overall; with `before`, cells read "before → after (change)"."""
    k = after.get("k", "k")
    header = ["task type", "prompts"] + [title.format(k=k) for _, title, _ in EVAL_COLUMNS]
    names = sorted({*after.get("by_task_type", {}), *(before or {}).get("by_task_type", {})})
    rows = []
    for name in [*names, "overall"]:
        new = after.get("by_task_type", {}).get(name) if name != "overall" else after["overall"]
        old = (
            None
            if before is None
            else (
                before.get("by_task_type", {}).get(name) if name != "overall" else before["overall"]
            )
        )
        row = [name, fmt(number((new or old or {}).get("num_prompts")), 0)]
        for key, _, digits in EVAL_COLUMNS:
            value = number((new or {}).get(key))
            if before is None:
                row.append(fmt(value, digits))
                continue
            previous = number((old or {}).get(key))
            change = f" ({value - previous:+.{digits}f})" if None not in (value, previous) else ""
            row.append(f"{fmt(previous, digits)} → {fmt(value, digits)}{change}")
        rows.append(row)
    return Table(header, rows)


def eval_blocks(run_dir: Path) -> list:
    reports = {}
    for name, relative in EVAL_FILES.items():
        path = run_dir / relative
        if path.is_file():
            report = _read_json(path, f"re-run `agentrl eval --out {path}` or delete it")
            if not isinstance(report, dict) or "overall" not in report:
                raise ReportInputError(
                    f"{path} is not an `agentrl eval` report (no 'overall'); "
                    "re-run `agentrl eval --out` or delete it"
                )
            reports[name] = with_tool_calls_per_episode(report)
    blocks: list = [Heading("Evaluation")]
    if not reports:
        return blocks + [Note(f"No evaluation: {', '.join(EVAL_FILES.values())} are missing.")]
    blocks.append(
        Note(
            "avg@k: the fraction of the k samples per prompt that are correct "
            "(accuracy); pass@k: the chance that one of k samples is correct.",
            kind="info",
        )
    )
    best_file = run_dir / "best" / "best.json"
    if "after" in reports and best_file.is_file():
        best = _read_json(best_file, "delete best/ (it is rewritten at the next evaluation)")
        blocks.append(
            Note(
                f"{EVAL_FILES['after']} describes the weights of the last step. The best "
                f"evaluated weights (held-out avg@k {fmt(number(best.get('eval_avg_at_k')), 3)}, "
                f"step {best.get('step')}, {best.get('eval_file')}) are in best/.",
                kind="info",
            )
        )
    compared = "before" in reports and "after" in reports
    if compared:
        blocks += [
            Heading(
                f"Before vs after training ({EVAL_FILES['before']} → {EVAL_FILES['after']})",
                level=3,
            ),
            eval_table(reports["before"], reports["after"]),
        ]
    elif "before" in reports or "after" in reports:
        missing = "after" if "before" in reports else "before"
        blocks.append(Note(f"No before/after comparison: {EVAL_FILES[missing]} is missing."))
    for name, report in reports.items():
        if name == "eval" or not compared:
            blocks += [Heading(EVAL_FILES[name], level=3), eval_table(None, report)]
    return blocks


def sample_blocks(run_dir: Path) -> list:
    path = run_dir / SAMPLES_FILE
    blocks: list = [Heading("Example trajectories")]
    if not path.is_file():
        return blocks + [Note(f"No example trajectories: {SAMPLES_FILE} is missing.")]
    samples, _ = read_jsonl(path, "fix or delete that line (one trajectory per line)")
    if not samples:
        return blocks + [Note(f"No example trajectories: {SAMPLES_FILE} is empty.")]
    earliest = min(range(len(samples)), key=lambda i: number(samples[i].get("step")) or 0)
    chosen = sorted({earliest, *range(max(0, len(samples) - NUM_LATEST_SAMPLES), len(samples))})
    return blocks + [Trajectory(samples[i]) for i in chosen]


def config_blocks(run_dir: Path) -> list:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return [Heading("Run config"), Note(f"No run config: {CONFIG_FILE} is missing.")]
    config = _read_json(path, "re-write it or delete it to leave the section out")
    return [
        Heading("Run config"),
        Code(json.dumps(config, indent=2), language="json", summary=CONFIG_FILE),
    ]


def write_report(run_dir: str | Path) -> ReportPaths:
    """Read RUN_DIR, write RUN_DIR/report/ (PNGs, report.md, report.html); return the paths."""
    from agentrl.trainer.report_plots import PLOTS, write_plots

    run_dir = Path(run_dir)
    records, notes = load_step_records(run_dir)
    # Every input is read (and checked) before anything is written.
    sections = [
        summary_blocks(run_dir, records),
        eval_blocks(run_dir),
        sample_blocks(run_dir),
        config_blocks(run_dir),
    ]
    out_dir = run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):  # a plot whose metric is gone must not linger
        stale.unlink()
    plotted = write_plots(records, out_dir)
    curves: list = [Heading("Training curves"), *(Note(n) for n in notes)]
    for spec in PLOTS:
        if spec.filename in plotted:
            curves.append(Image(plotted[spec.filename], spec.title))
        else:
            curves.append(
                Note(
                    f"No {spec.title.lower()} plot: no record in {METRICS_FILE} has "
                    f"{' or '.join(key for key, _ in spec.series)}."
                )
            )
    blocks = [*sections[0], *curves, *sections[1], *sections[2], *sections[3]]
    title = f"Run report: {run_dir.resolve().name}"
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(title, blocks))
    html = out_dir / "report.html"
    html.write_text(render_html(title, blocks))
    return ReportPaths(list(plotted.values()), markdown, html)
