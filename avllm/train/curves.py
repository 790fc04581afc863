"""A training run's curves read back from its TensorBoard logs: each scalar's first and last
value, so a run's closing note can say where the DPO rewards and the held-out preference
accuracy started and ended without opening TensorBoard.

`avllm curves RUN_DIR` prints them; the Trainer writes the logs in RUN_DIR/runs/ (one folder per
start, so a resumed run's later points take over from the earlier run's at the same step).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

Curve = list[tuple[int, float]]  # (step, value), by step
DPO_TAGS = (
    "train/loss",
    "train/rewards/chosen",
    "train/rewards/rejected",
    "train/rewards/margins",
    "train/rewards/accuracies",
    "eval/loss",
    "eval/rewards/chosen",
    "eval/rewards/rejected",
    "eval/rewards/margins",
    "eval/rewards/accuracies",
    "eval/preference_accuracy",
)


def read_curves(run_dir: str | Path) -> dict[str, Curve]:
    """Every scalar logged under run_dir (a training output_dir, or its runs/ folder), by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    files = sorted(run_dir.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ConfigError(f"{run_dir}: no TensorBoard logs (events.out.tfevents.*); give a training run's output_dir")
    points: dict[str, dict[int, float]] = {}
    for path in files:  # oldest first: a resumed run overwrites the steps it ran again
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            points.setdefault(tag, {}).update((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(steps.items()) for tag, steps in sorted(points.items())}


def summary_lines(curves: dict[str, Curve], tags: tuple[str, ...] | None = None) -> list[str]:
    """One line per curve: its start and end (step and value) and how many points it has."""
    lines = []
    for tag in tags or tuple(curves):
        curve = curves.get(tag)
        if curve:
            (s0, v0), (s1, v1) = curve[0], curve[-1]
            lines.append(f"{tag:28} step {s0:>5}: {v0:9.4f}  ->  step {s1:>5}: {v1:9.4f}  ({len(curve)} points)")
    return lines
