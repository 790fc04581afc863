"""Datasets: record formats and their validation (formats), the synthetic audio-visual set
(synth, synth_media, synth_text). Formats are documented in data/instructions/README.md.
"""

from .formats import (
    InstructionRecord,
    PreferenceRecord,
    Problem,
    QARecord,
    is_yes_no,
    load,
    qa_messages,
    qa_prompt,
    validate,
    write_jsonl,
)

__all__ = [
    "InstructionRecord",
    "PreferenceRecord",
    "Problem",
    "QARecord",
    "is_yes_no",
    "load",
    "qa_messages",
    "qa_prompt",
    "validate",
    "write_jsonl",
]
