"""avllm as an lmms-eval model: `lmms-eval --model avllm --model_args pretrained=avllm/weights/starter --tasks ...`.

lmms-eval finds the class through the `lmms_eval.models` entry point in pyproject.toml (`manifest`).
The model answers the way `avllm eval` does: the task's prompt is the user's turn with the clip after
it, each option is scored by the shared scorer (AVLLMScorer: mean log-probability per token of the
option as the assistant's whole answer) and generation is greedy unless the task asks otherwise. So
on the same items, lmms-eval's accuracy and `avllm eval`'s agree (tests/test_lmms_eval.py checks it).

Inputs: a video or audio file path, or an audio array (a `{"array", "sampling_rate"}` dict as
Hugging Face datasets give it, or a torchcodec AudioDecoder), one per question. Images and text-only
tasks are refused with a message rather than answered without media.

`doc_to_text` and `doc_to_visual` below read this project's QA JSONL (what `avllm synth` writes and
`avllm eval --tasks jsonl:...` scores), for local lmms-eval tasks (docs/evaluation.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..config import default_model
from ..data.formats import qa_prompt
from ..errors import ConfigError, MediaError
from ..prompt import Message, with_video
from ..scoring import AVLLMScorer

MODEL_ID = "avllm"  # the name lmms-eval's --model takes


def manifest() -> Any:
    """The entry point lmms-eval reads (group `lmms_eval.models`): its name for this class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.AVLLMLmms")


class AVLLMLmms(lmms):
    """An avllm model (preset, YAML, checkpoint folder or hf:ORG/NAME) behind lmms-eval's interface.

    `--model_args`: pretrained (default: the trained starter), frames (frames sampled per clip;
    default: the model's setting). lmms-eval's --batch_size is the options scored per forward pass
    (as `avllm eval --batch-size`); "auto" takes avllm's default of 16.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        frames: int | None = None,
        device: str | None = None,
        batch_size: int | str = 16,
        max_batch_size: int | None = None,  # lmms-eval passes --max_batch_size; batch_size alone batches here
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(f"--model_args {sorted(unknown)}: unknown to avllm; it takes pretrained and frames")
        from ..model import AVLLM

        pretrained = str(pretrained or default_model())
        size = int(batch_size) if str(batch_size).isdigit() else 16
        self.model = AVLLM.load(pretrained, device=device)
        self.scorer = AVLLMScorer(self.model, batch_size=size, frames=int(frames) if frames else None, name=pretrained)
        self._last: tuple[Any, Any] = (None, None)  # (media key, encoded clip): questions come clip by clip

    # ------------------------------------------------------------------------- lmms-eval's interface
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request, the continuation's mean negative log-likelihood per token and whether greedy
        decoding gives exactly it. The first value is a loss, as lmms-eval's own models return it
        and as its multiple-choice scoring reads it (the option with the lowest value wins).
        Questions are scored clip by clip, each clip's options in one call, as `avllm eval` does.

        Each pair travels inside a GenerationResult: lmms-eval 0.7.3's evaluator replaces any other
        response that is not a string by its str() (api/instance.py, unwrap_generation_output), which
        its multiple-choice scoring then cannot read; a GenerationResult's payload passes unchanged."""
        questions: dict[tuple, list[int]] = {}  # (task, split, doc_id, context) -> its requests, in order
        for i, request in enumerate(requests):
            context, _, _, doc_id, task, split = request.args
            questions.setdefault((task, split, doc_id, context), []).append(i)
        clips: dict[Any, list[tuple]] = {}
        for key, indices in sorted(questions.items(), key=lambda kv: kv[0][2]):
            task, split, doc_id, context = key
            doc = self.task_dict[task][split][doc_id]
            options = []
            for i in indices:
                continuation = requests[i].args[1]
                options.append((continuation if isinstance(continuation, str) else continuation(doc)).strip())
            media = _one_media(requests[indices[0]].args[2](doc), key[:3])
            clips.setdefault(_media_key(media, key), []).append((media, context, options, indices))
        out: list[GenerationResult] = [None] * len(requests)  # type: ignore[list-item]  # every slot is filled
        bar = tqdm(total=len(requests), desc="avllm loglikelihood", disable=self.rank != 0)
        for key, group in clips.items():
            enc = self._encode(key, group[0][0])
            scores = self.scorer.choice_scores(enc, [(_messages(c), options) for _, c, options, _ in group])
            for (_, context, options, indices), question_scores in zip(group, scores):
                greedy = self._greedy(enc, context, options)
                for i, option, score in zip(indices, options, question_scores):
                    out[i] = GenerationResult(text=(-float(score), option == greedy))  # type: ignore[arg-type]
                bar.update(len(indices))
        bar.close()
        return out

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for request in tqdm(requests, desc="avllm generate", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            where = (task, split, doc_id)
            media = _one_media(doc_to_visual(doc), where)
            out.append(self._answer(self._encode(_media_key(media, where), media), context, gen_kwargs))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Each round is a new question (the task's doc_to_text gives it from the earlier answers),
        as lmms-eval's reference models run them, until doc_to_text says the dialogue is over."""
        out = []
        for request in tqdm(requests, desc="avllm multi-round", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            visual, rounds, info, index = doc_to_visual(doc), [], None, 0
            while True:
                if index:
                    visual, context, done, rounds, info = doc_to_text(
                        doc, previous_output=rounds, round_idx=index, previous_round_info=info
                    )
                    rounds = list(rounds)
                    if done:
                        break
                media = _one_media(visual, (task, split, doc_id, index))
                enc = self._encode(_media_key(media, (task, split, doc_id, index)), media)
                rounds.append(self._answer(enc, context, dict(gen_kwargs)))
                index += 1
            out.append(rounds)
        return out

    # ------------------------------------------------------------------------- helpers
    def _encode(self, key: Any, media: Any) -> Any:
        if self._last[0] != key:
            with _as_file(media) as path:
                self._last = (key, self.scorer.encode(path))
        return self._last[1]

    def _answer(self, enc: Any, context: str, gen_kwargs: dict[str, Any]) -> str:
        """The answer to `context`, cut at the first of the task's stop strings (`until`)."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature") or 0.0) if gen_kwargs.get("do_sample", True) else 0.0
        stream = self.model.stream(_messages(context), enc, int(gen_kwargs.get("max_new_tokens", 128)), temperature)
        text = ""
        try:
            for piece in stream:
                text += piece
                cut = min((text.find(s) for s in until if s and s in text), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    break
        finally:
            stream.close()  # stops generation at the next token
        return text.strip()

    def _greedy(self, enc: Any, context: str, options: list[str]) -> str:
        """The greedy answer, long enough to tell whether it is one of the options: the longest
        option's tokens, its end of turn, and one more (a different tokenization of the same text)."""
        longest = max(len(self.model.tokenizer.encode(o, add_special_tokens=False)) for o in options)
        return self.scorer.generate(enc, _messages(context), longest + 2)


def _one_media(visuals: Any, where: tuple) -> Any:
    """The one video or audio input of a question (a path or audio samples); `where` names the question."""
    visuals = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
    if len(visuals) != 1:
        raise MediaError(
            f"lmms-eval question {where} (task, split, doc): {len(visuals)} inputs; avllm answers about "
            "exactly one video or audio clip per question (use a task that gives one)"
        )
    return visuals[0]


def _messages(context: str) -> list[Message]:
    return [{"role": "user", "content": with_video(context)}]


def _media_key(media: Any, where: tuple) -> Any:
    """Questions on the same file share its encoding; audio arrays are keyed by their question."""
    return str(Path(media).resolve()) if isinstance(media, (str, os.PathLike)) else where


@contextmanager
def _as_file(media: Any) -> Iterator[Path]:
    """A path for `media`: the file itself, or audio samples written to a temporary WAV file (so they
    take the same decoding, resampling and limits as a file would)."""
    if isinstance(media, (str, os.PathLike)):
        yield Path(media)
        return
    if isinstance(media, dict) and "array" in media and "sampling_rate" in media:
        samples, rate = np.asarray(media["array"], dtype=np.float32), int(media["sampling_rate"])
    elif hasattr(media, "get_all_samples"):  # torchcodec's AudioDecoder (datasets >= 4)
        decoded = media.get_all_samples()
        samples, rate = decoded.data.float().numpy(), int(decoded.sample_rate)
    else:
        raise MediaError(
            f"lmms-eval gave a {type(media).__name__}; avllm takes a video or audio file path or audio "
            "samples (images are not supported)"
        )
    with tempfile.TemporaryDirectory(prefix="avllm-lmms-") as folder:
        path = Path(folder) / "audio.wav"
        _write_wav(samples, rate, path)
        yield path


def _write_wav(samples: np.ndarray, rate: int, path: Path) -> None:
    """Mono float32 WAV (channels, if any, averaged: [S], [C, S])."""
    import av

    mono = np.ascontiguousarray(samples if samples.ndim == 1 else samples.mean(axis=0), dtype=np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_f32le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(mono[None], format="flt", layout="mono")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


# ----------------------------------------------------------------------------- local tasks over avllm QA JSONL


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The question with its options, worded as `avllm eval` asks it."""
    return qa_prompt(doc["question"], doc.get("choices"))


def doc_to_visual(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> list[str]:
    """The clip, relative to `media_root` (the QA file's folder) from the task's lmms_eval_specific_kwargs."""
    root = (lmms_eval_specific_kwargs or {}).get("media_root", ".")
    return [str(Path(root) / doc["media"])]
