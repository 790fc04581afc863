"""How likely an AVLLM finds each candidate answer to a question about a clip (what `avllm eval`
scores multiple choice by), and its greedy answer.

Each option is scored as the assistant's whole answer (its tokens and the end-of-turn tokens) by
the mean log-probability per token, so long and short options compete fairly.

Shared work runs once, in three passes over a key/value cache: the tokens every sequence starts
with (system prompt and media), then each question's own tokens (one row per question), then the
options (one row per option, on its question's row). Sequences whose shared start does not hold
all the media (the usual prompt puts the clip after the question) run whole instead, left padded
so that only the scored tokens' logits are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .inference import encode_file
from .model import AVLLM, EncodedClip
from .prompt import IGNORE_INDEX, Message

ChoiceRequest = tuple[list[Message], list[str]]  # conversation ending in the user's turn, options
Scored = tuple[list[int], int]  # token ids of a conversation and its answer, how many final tokens are scored
Job = tuple[int, list[int], int]  # an option: its request, its tokens after the request's cached ones, how many scored
Row = tuple[DynamicCache, torch.Tensor, int]  # a cache, its attention mask, and which of its rows


class AVLLMScorer:
    """Option scores and greedy answers of an AVLLM, each clip encoded once for all its questions."""

    def __init__(self, model: AVLLM, batch_size: int = 16, frames: int | None = None, name: str | None = None):
        self.model = model
        self.batch_size = max(1, batch_size)
        self.frames = frames
        self.name = name or model.config.name

    def encode(self, media: Path) -> EncodedClip:
        return encode_file(self.model, media, self.frames)

    def generate(
        self, enc: EncodedClip, messages: list[Message], max_new_tokens: int, until: Callable[[str], bool] | None = None
    ) -> str:
        text = ""
        for piece in self.model.stream(messages, enc, max_new_tokens=max_new_tokens):
            text += piece
            if until is not None and until(text):
                break
        return text.strip()

    def choice_scores(self, enc: EncodedClip, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        """For each request, the length-normalised log-likelihood of each option as the answer."""
        groups = [[self.sequence(enc, messages, option) for option in options] for messages, options in requests]
        seqs = [seq for group in groups for seq in group]
        with torch.inference_mode():
            shared = common_length(seqs, 0)
            if shared == 0 or any(self.model.video_token_id in ids[shared:] for ids, _ in seqs):
                flat = [
                    score
                    for k in range(0, len(seqs), self.batch_size)
                    for score in self._whole_scores(enc, seqs[k : k + self.batch_size])
                ]
            else:
                flat = self._staged_scores(enc, groups, shared)
        out, k = [], 0
        for group in groups:
            out.append(flat[k : k + len(group)])
            k += len(group)
        return out

    def sequence(self, enc: EncodedClip, messages: list[Message], option: str) -> Scored:
        """Token ids of the conversation answered with `option`, and how many final tokens are scored."""
        tokens = self.model.tokenize(
            [*messages, {"role": "assistant", "content": option}], enc, add_generation_prompt=False
        )
        labels = tokens.labels
        end = max(i for i, t in enumerate(labels) if t != IGNORE_INDEX) + 1
        begin = end
        while begin > 0 and labels[begin - 1] != IGNORE_INDEX:  # the last assistant turn only
            begin -= 1
        return tokens.input_ids[:end], end - begin

    # ---- the shared start once, then each question, then the options, over a key/value cache
    def _staged_scores(self, enc: EncodedClip, groups: list[list[Scored]], shared: int) -> list[float]:
        device = self.model.llm.get_input_embeddings().weight.device
        first = torch.tensor([groups[0][0][0][:shared]], device=device)
        out = self._forward(self.model.embed(first, [enc]), torch.ones_like(first), logits_to_keep=1)
        cache, mask = out.cache, torch.ones((1, shared), dtype=torch.long, device=device)
        owns = [common_length(group, shared) for group in groups]
        parts = [group[0][0][shared:own] for group, own in zip(groups, owns)]
        rows: list[Row] = [(cache, mask, 0)] * len(groups)
        if any(parts):  # the questions' own tokens, one row each
            for k in range(0, len(groups), self.batch_size):
                chunk = range(k, min(k + self.batch_size, len(groups)))
                sub, sub_mask = select(cache, [0] * len(chunk)), mask.expand(len(chunk), -1)
                _, new_cache, new_mask = self._extend(sub, sub_mask, [parts[i] for i in chunk], logits=False)
                for j, i in enumerate(chunk):
                    rows[i] = (new_cache, new_mask, j)
        jobs = [(g, ids[own:], n) for g, (group, own) in enumerate(zip(groups, owns)) for ids, n in group]
        scores: list[float] = []
        for k in range(0, len(jobs), self.batch_size):
            for part in split_by_source(jobs[k : k + self.batch_size], rows):
                scores += self._option_scores(part, rows)
        return scores

    def _option_scores(self, jobs: list[Job], rows: list[Row]) -> list[float]:
        """Mean log-probability of each job's last `n` tokens, run after its question's cache row."""
        source, source_mask, _ = rows[jobs[0][0]]
        index = [rows[g][2] for g, _, _ in jobs]
        sub = select(source, index)
        sub_mask = source_mask[torch.tensor(index, device=source_mask.device)]
        logprobs, _, _ = self._extend(sub, sub_mask, [rest for _, rest, _ in jobs], logits=True)
        out = []
        for row, (_, rest, n) in enumerate(jobs):
            pos = torch.arange(len(rest) - n - 1, len(rest) - 1, device=logprobs.device)
            target = torch.tensor(rest, device=logprobs.device)[pos + 1]
            out.append(float(logprobs[row, pos, target].mean()))
        return out

    def _extend(
        self, cache: DynamicCache, mask: torch.Tensor, parts: list[list[int]], logits: bool
    ) -> tuple[torch.Tensor | None, DynamicCache, torch.Tensor]:
        """Run `parts` (one token list per cache row, right padded) after the cached tokens; rows may
        hold holes (padding) in the cache, so positions are given explicitly. Returns log-probs
        (or None), the extended cache and its mask."""
        device = mask.device
        width = max(1, max(len(p) for p in parts))
        ids = torch.zeros((len(parts), width), dtype=torch.long, device=device)
        new = torch.zeros((len(parts), width), dtype=torch.long, device=device)
        for row, p in enumerate(parts):
            if p:
                ids[row, : len(p)] = torch.tensor(p, device=device)
                new[row, : len(p)] = 1
        positions = mask.sum(dim=1, keepdim=True) + torch.arange(width, device=device).unsqueeze(0)
        full = torch.cat([mask, new], dim=1)
        out = self._forward(
            self.model.llm.get_input_embeddings()(ids),
            full,
            cache,
            positions,
            logits_to_keep=0 if logits else 1,  # 0: every position's logits
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1) if logits else None
        return logprobs, out.cache, full

    def _forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        cache: DynamicCache | None = None,
        positions: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """The LLM (with its adapter) over `embeds`, after `cache` when given; the output holds the
        extended cache."""
        return self.model.llm(
            inputs_embeds=embeds,
            attention_mask=mask,
            cache=cache,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )

    # ---- whole sequences, left padded
    def _whole_scores(self, enc: EncodedClip, batch: list[Scored]) -> list[float]:
        """Mean log-probability of each sequence's last `n` tokens; sequences padded on the left so
        that all scored tokens sit at the end and only those logits are computed."""
        device = self.model.llm.get_input_embeddings().weight.device
        pad = self.model.tokenizer.pad_token_id
        pad = 0 if pad is None or pad == self.model.video_token_id else pad
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, _) in enumerate(batch):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        keep = max(n for _, n in batch) + 1
        ids, mask = ids.to(device), mask.to(device)
        embeds = self.model.embed(ids, [enc] * len(batch))
        logits = self.model.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position j predicts token j + 1
        lengths = torch.tensor([n for _, n in batch], device=device)
        scored = torch.arange(keep - 1, device=device).unsqueeze(0) >= keep - 1 - lengths.unsqueeze(1)
        targets = ids[:, width - keep + 1 :].masked_fill(~scored, 0)  # unscored slots may hold media placeholders
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, keep - 1]
        return [float(picked[row, picked.shape[1] - n :].mean()) for row, (_, n) in enumerate(batch)]


def common_length(seqs: list[Scored], floor: int) -> int:
    """How many leading tokens all sequences share (at least `floor`), leaving each one's first
    scored logit outside."""
    length = min(len(ids) - n for ids, n in seqs) - 1
    first = seqs[0][0]
    for ids, _ in seqs[1:]:
        j = floor
        while j < length and ids[j] == first[j]:
            j += 1
        length = j
    return max(length, floor)


def select(cache: DynamicCache, index: list[int]) -> DynamicCache:
    """A new cache holding rows `index` (repeats allowed) of `cache`, which stays as it was."""
    idx = torch.tensor(index, device=cache.layers[0].keys.device)
    return DynamicCache(ddp_cache_data=[(layer.keys[idx], layer.values[idx]) for layer in cache.layers])


def split_by_source(jobs: list[Job], rows: list[Row]) -> list[list[Job]]:
    """`jobs` cut where the cache their question's row lives in changes (questions run in batches)."""
    parts: list[list[Job]] = []
    for job in jobs:
        if parts and rows[parts[-1][-1][0]][0] is rows[job[0]][0]:
            parts[-1].append(job)
        else:
            parts.append([job])
    return parts
