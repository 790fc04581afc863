"""`avllm data onpolicy`: preference pairs whose rejected answer is what a model itself says
wrongly about the clip (on-policy errors), for DPO to push down exactly the mistakes it makes.

For each pair of a preference file (the prompts of `avllm data pairs`), the model answers the
prompt (greedy, or sampled with a temperature); an answer that is wrong becomes the rejected
side of a new pair, against the file's chosen answer. Wrong means:

- a yes/no question (the chosen answer decides yes or no, `formats.decision`): the answer's
  decision differs;
- any other question: the answer names something the grounded (chosen) answer does not: a colour,
  shape, number, direction, sound, spoken word or picture term (GROUNDING_TERMS) that is absent
  from the chosen answer. For a sound-only file, whose chosen answer says there is no picture,
  any picture term counts; for a mute clip, any sound.

Answers that are right, or whose errors these rules cannot see, are left out. Each clip's
encoder outputs come from the feature cache, so the DPO run after it finds them there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataError
from .formats import PreferenceRecord, decision, load, write_jsonl
from .synth import HELDOUT_VOCAB, VOCAB
from .synth_media import COLOURS, SHAPES, TONES
from .synth_text import DIRECTIONS, NUMBERS

PICTURE_TERMS = frozenset(
    [*COLOURS, *SHAPES, *DIRECTIONS, "screen", "flash", "flashes", "shown", "appears", "moves", "white"]
)
SOUND_TERMS = frozenset(
    [*TONES, *VOCAB, *HELDOUT_VOCAB, "beep", "tone", "says", "speaking", "speaks", "spoken", "voice"]
    + ["music", "dog", "barking", "clapping", "horn"]  # the absent sounds synth's probes ask about
)
GROUNDING_TERMS = PICTURE_TERMS | SOUND_TERMS | frozenset(NUMBERS)


def terms(text: str) -> set[str]:
    """The grounding terms a text names, plurals folded ("circles" -> "circle")."""
    out = set()
    for word in re.findall(r"[a-z]+", text.lower()):
        for stem in (word, word[:-1], word[:-2]):
            if stem in GROUNDING_TERMS:
                out.add(stem)
                break
    return out


def is_wrong(answer: str, chosen: str) -> bool:
    """Whether a model's answer contradicts the grounded one (see the module docstring)."""
    decided = decision(chosen)
    if decided is not None:
        return decision(answer) != decided
    return bool(terms(answer) - terms(chosen))


@dataclass
class OnPolicySummary:
    asked: int
    wrong: int
    out: Path


def onpolicy_pairs(
    model: Any,
    pairs: str | os.PathLike,
    out: str | os.PathLike,
    cache: Any,
    limit: int | None = None,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    progress: bool = True,
) -> OnPolicySummary:
    """Ask `model` (an AVLLM) every prompt of the preference file `pairs` (the first `limit`) and
    write a pair for each wrong answer to `out`, beside `pairs` (the media paths are kept)."""
    records: list[PreferenceRecord] = load(pairs, "preference")  # type: ignore[assignment]
    records = records[:limit] if limit else records
    folder = Path(pairs).resolve().parent
    if Path(out).resolve().parent != folder:
        raise DataError(f"--out {out}: write it in the folder of {pairs}, whose media paths it keeps")
    written = []
    bar = tqdm(total=len(records), desc="on-policy answers", unit="prompt", disable=not progress)
    for record in sorted(records, key=lambda r: str(r.media)):  # a clip's prompts one after another
        enc = cache.get(record.media)
        answer = "".join(model.stream(record.prompt, enc, max_new_tokens, temperature)).strip()
        if answer and answer != record.chosen.strip() and is_wrong(answer, record.chosen):
            written.append(
                {
                    **record.extra,
                    "id": f"{record.id}-onpolicy",
                    "media": os.path.relpath(record.media, folder),
                    "prompt": record.prompt,
                    "chosen": record.chosen,
                    "rejected": answer,
                    "target": "on-policy",
                }
            )
        bar.update()
        bar.set_postfix(wrong=len(written))
    bar.close()
    write_jsonl(out, written)
    return OnPolicySummary(len(records), len(written), Path(out))
