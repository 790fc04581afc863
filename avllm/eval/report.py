"""The evaluation report: per task and per kind n, correct, accuracy and chance (plus, for yes/no items,
the hallucination rate), as JSON and as a Markdown table.

- chance: for multiple choice the mean of 1/len(choices); for open questions the accuracy of
  always giving the most common answer of that group (a majority baseline).
- hallucination_rate: among yes/no items whose true answer is no, the share answered yes.
  yes_rate (the share of all yes/no items answered yes) sits beside it, and precision, recall
  and F1 of "yes", as AVHBench reports each of its tasks: a model that says "no" to everything
  has no hallucinations but a yes rate of 0 and an F1 of 0.
- Kinds written `modality/what` (probes: `audio/speech`; MUSIC-AVQA: `audio/counting`) are also
  summed per modality as `audio/*`.
- Items with a `split` (e.g. heldout_vocab) are left out of the task's main figures and reported
  under `splits`, so a held-out-vocabulary score never hides inside the overall one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .matching import ItemResult, TaskResult, normalize

MAX_NAMED = 20  # missing or unreadable media named in the report; the rest are counted


def _group(items: list[ItemResult]) -> dict[str, Any]:
    n, correct = len(items), sum(r.correct for r in items)
    # the count, and the share to 6 places: rounding twice (to 4 places, then to 1 in print) can
    # round a share the wrong way (0.78446 -> 0.7845, printed 78.5 rather than 78.4 percent)
    out: dict[str, Any] = {"n": n, "correct": correct, "accuracy": round(correct / n, 6) if n else None}
    open_items = [r for r in items if not r.choices]
    majority = Counter(normalize(r.answer) for r in open_items).most_common(1)
    majority_share = majority[0][1] / len(open_items) if open_items else 0.0
    chances = [1 / len(r.choices) if r.choices else majority_share for r in items]
    out["chance"] = round(sum(chances) / n, 4) if n else None
    yes_no = [r for r in items if r.yes_no]
    if yes_no:
        said_yes = {
            id(r) for r in yes_no if r.prediction is not None and normalize(r.prediction).split()[:1] == ["yes"]
        }
        true_no = [r for r in yes_no if normalize(r.answer) == "no"]
        out["hallucination_rate"] = (
            round(sum(id(r) in said_yes for r in true_no) / len(true_no), 4) if true_no else None
        )
        out["yes_rate"] = round(len(said_yes) / len(yes_no), 4)
        true_yes = sum(id(r) in said_yes for r in yes_no if normalize(r.answer) == "yes")
        positives = sum(normalize(r.answer) == "yes" for r in yes_no)
        precision = true_yes / len(said_yes) if said_yes else 0.0
        recall = true_yes / positives if positives else 0.0
        out["precision"], out["recall"] = round(precision, 4), round(recall, 4)
        out["f1"] = round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0
    return out


def _by_kind(items: list[ItemResult]) -> dict[str, Any]:
    kinds: dict[str, list[ItemResult]] = {}
    for r in items:
        kinds.setdefault(r.kind, []).append(r)
        if "/" in r.kind:
            kinds.setdefault(r.kind.split("/")[0] + "/*", []).append(r)
    return {k: _group(v) for k, v in sorted(kinds.items())}


def summarize(result: TaskResult) -> dict[str, Any]:
    main = [r for r in result.results if not r.split]
    out = _group(main)
    out["by_kind"] = _by_kind(main)
    splits: dict[str, list[ItemResult]] = {}
    for r in result.results:
        if r.split:
            splits.setdefault(r.split, []).append(r)
    if splits:
        out["splits"] = {name: {**_group(items), "by_kind": _by_kind(items)} for name, items in sorted(splits.items())}
    out["mode"] = result.mode
    out["missing_media"] = result.missing_items
    if result.missing:
        out["missing_files"] = result.missing[:MAX_NAMED]
    out["unreadable_media"] = result.unreadable_items
    if result.unreadable:
        out["unreadable_files"] = dict(list(result.unreadable.items())[:MAX_NAMED])
    if result.skipped:
        out["skipped"] = dict(result.skipped)
    out["seconds"] = round(result.seconds, 2)
    return out


def build_report(results: list[TaskResult], model: str, seconds: float) -> dict[str, Any]:
    return {"tasks": {r.name: summarize(r) for r in results}, "model": model, "seconds": round(seconds, 2)}


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    """One table: each task's overall row, its kinds, then its splits; then, for the groups asked
    yes/no, AVHBench's table (accuracy, precision, recall, F1, yes rate); notes on missing media last."""
    lines = [
        f"Model: `{report['model']}`; {report['seconds']:.1f} s in all.",
        "",
        "| task | group | n | accuracy | chance | hallucination rate | yes rate |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    yes_no = [
        "",
        'Yes/no questions (AVHBench\'s figures: precision, recall and F1 of "yes"):',
        "",
        "| task | group | n | accuracy | precision | recall | F1 | yes rate | hallucination rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []

    def row(task: str, group: str, g: dict[str, Any]) -> None:
        lines.append(
            f"| {task} | {group} | {g['n']} | {_pct(g['accuracy'])} | {_pct(g['chance'])} | "
            f"{_pct(g.get('hallucination_rate'))} | {_pct(g.get('yes_rate'))} |"
        )
        if "yes_rate" in g:
            figures = ("accuracy", "precision", "recall", "f1", "yes_rate", "hallucination_rate")
            yes_no.append(f"| {task} | {group} | {g['n']} | " + " | ".join(_pct(g.get(k)) for k in figures) + " |")

    for name, t in report["tasks"].items():
        row(name, f"all ({t['mode']})", t)
        for kind, g in t["by_kind"].items():
            row("", kind, g)
        for split, s in t.get("splits", {}).items():
            row("", f"split {split}", s)
            for kind, g in s["by_kind"].items():
                row("", f"split {split}: {kind}", g)
        if t["missing_media"]:
            notes.append(
                f"- {name}: {t['missing_media']} item(s) not scored, media missing "
                f"({', '.join(t.get('missing_files', [])[:5])}{', ...' if len(t.get('missing_files', [])) > 5 else ''})"
            )
        if t["unreadable_media"]:
            notes.append(f"- {name}: {t['unreadable_media']} item(s) not scored, media unreadable")
        for reason, count in t.get("skipped", {}).items():
            notes.append(f"- {name}: {count} annotation(s) skipped: {reason}")
    if len(yes_no) > 5:
        lines += yes_no
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path, results: list[TaskResult] | None = None) -> list[Path]:
    """FILE (JSON), FILE with .md (the table) and, given the results, FILE with .predictions.jsonl."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(report))
    written = [out, md]
    if results is not None:
        preds = out.with_suffix(".predictions.jsonl")
        with open(preds, "w", encoding="utf-8") as fh:
            for r in results:
                for item in r.results:
                    fh.write(
                        json.dumps(
                            {
                                "task": r.name,
                                "id": item.id,
                                "kind": item.kind,
                                "split": item.split,
                                "answer": item.answer,
                                "prediction": item.prediction,
                                "correct": item.correct,
                                "scores": None if item.scores is None else [round(s, 4) for s in item.scores],
                                "generated": item.generated,
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
        written.append(preds)
    return written
