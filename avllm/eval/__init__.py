"""Zero-shot evaluation: benchmark adapters (tasks), asking and answer matching (matching) and reports
(report); the model's option scores come from avllm/scoring.py.

`run_eval` is what `avllm eval` calls: every task is loaded and validated before the model
is, so a bad annotation file fails in a second, not after minutes of loading.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..model import AVLLM
from ..scoring import AVLLMScorer
from .matching import MODES, AnswerModel, TaskResult, evaluate
from .report import build_report, markdown, write_report
from .tasks import TASKS, EvalItem, Task, TaskData, make_task

__all__ = [
    "MODES",
    "TASKS",
    "AnswerModel",
    "EvalItem",
    "Task",
    "TaskData",
    "TaskResult",
    "build_report",
    "evaluate",
    "make_task",
    "markdown",
    "run_eval",
    "write_report",
]


def run_eval(
    model: str | AnswerModel,
    tasks: list[str],
    limit: int | None = None,
    mode: str = "loglik",
    media_dir: str | None = None,
    allow_outside_media: bool = False,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    out: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
    engine: str = "torch",
) -> dict[str, Any]:
    """Load the tasks, then the model (a preset, YAML or checkpoint folder, or an AnswerModel),
    score every task and return the report (also written to `out` and `out`.md when given).
    `engine` generates the answers (AVLLM.use_engine); options are scored by torch either way."""
    start = time.perf_counter()
    loaded = [make_task(spec, media_dir, allow_outside_media).load() for spec in tasks]
    if isinstance(model, str):
        loaded_model = AVLLM.load(model, device=device, merge_lora=engine != "torch", engine=engine)
        scorer: AnswerModel = AVLLMScorer(loaded_model, batch_size=batch_size, name=model)
    else:
        scorer = model
    results = [evaluate(t, scorer, mode, limit, max_new_tokens, progress) for t in loaded]
    report = build_report(results, scorer.name, time.perf_counter() - start)
    if out is not None:
        write_report(report, out, results)
    return report
