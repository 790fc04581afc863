"""AVLLM: frozen encoders -> projectors -> time-slot interleave -> splice at <video> -> causal LM.

The clip is cut into time slots, one per sampled frame (or, for sound alone, uniform slots).
Each slot contributes [frame tokens][audio tokens of that slot's time span], in time order,
optionally after a "t=3.0s" text mark (always, as "t=12:30", in a clip longer than media.long_clip),
and followed by the speech that starts in it as text (speech.py). The slot layout is a list of
placeholder ids that replaces the prompt's <video> token; `embed` scatters the media embeddings
into exactly those positions and refuses any count mismatch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import hub, llamacpp
from .config import ModelConfig, load_model_config, to_dict
from .decoding import Engine, generate_ids, stream_text
from .errors import ConfigError, SpliceError
from .llm import DTYPES, LoadedLLM, load_llm, pack_linears, resolve_dtype
from .llm import merge_lora as merge_lora_weights
from .media import Clip, MediaFacts, sample_times
from .projector.clip_summary import ClipSummary
from .projector.mlp_pool import MLPPoolProjector
from .prompt import IGNORE_INDEX, ChatTokens, Message, add_video_token, encode_chat, expand_placeholders
from .speech import NO_SPEECH, Segment, Transcriber, ctranslate2_source, subtitle_text

CONFIG_FILE = "avllm_config.json"
NO_PICTURE = " [no picture]"  # after the slots of a file without a video track: absence, stated as text
PROJECTOR_FILE = "projectors.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHECKPOINT_FORMAT = 1
log = logging.getLogger(__name__)


@dataclass
class EncodedClip:
    """A clip after the frozen encoders: what the projectors read (and what a feature cache stores)."""

    visual: torch.Tensor | None  # [T, P, Dv] patch tokens, None for sound-only files
    frame_times: np.ndarray  # [T] seconds
    # [A, Da] at 50 Hz, None when there is no audio track; for a long clip (media.long_clip) already pooled
    # per slot as Whisper encodes it: [slots with sound, audio tokens, Da] (see AVLLM.encode)
    audio: torch.Tensor | None
    duration: float
    facts: MediaFacts | None = None
    timings: dict[str, float] = field(default_factory=dict)
    subtitles: list[Segment] = field(default_factory=list)  # speech heard, in time order (model.subtitles)
    subtitles_left_out: int = 0  # segments past the model's subtitle_tokens budget (transcription stops at the first)

    @property
    def truncated(self) -> list[str]:
        """What was cut on the way to the prompt: the media's limits, then the subtitle budget."""
        return (list(self.facts.truncated) if self.facts else []) + (["subtitles"] if self.subtitles_left_out else [])


def slot_edges(times: np.ndarray, duration: float) -> np.ndarray:
    """Slot boundaries: midway between neighbouring frame times, from 0 to the clip's end."""
    mids = (times[1:] + times[:-1]) / 2
    return np.concatenate([[0.0], mids, [max(duration, float(times[-1]) if len(times) else 0.0)]])


def audio_spans(edges: np.ndarray, rate: int, frames: int) -> list[tuple[int, int]]:
    """Per slot the [start, end) of the audio frames (at `rate` per second) in its time span, cut at
    `frames`, the sound's length: empty (end <= start) where the sound ended before the slot."""
    spans = []
    for start, end in zip(edges[:-1], edges[1:]):
        lo = int(start * rate)
        spans.append((lo, min(max(int(np.ceil(end * rate)), lo + 1), frames)))
    return spans


def clock(seconds: float) -> str:
    """12:30 or 1:02:03: a time as people write it in a long recording."""
    whole = int(round(seconds))
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours}:{minutes:02d}:{whole % 60:02d}" if hours else f"{minutes}:{whole % 60:02d}"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class AVLLM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        audio_encoder: nn.Module,
        visual_encoder: nn.Module,
        llm: LoadedLLM,
        transcriber: Transcriber | None = None,
    ):
        super().__init__()
        self.config = config
        self.audio_encoder = audio_encoder
        self.transcriber = transcriber  # None: no subtitles (config.subtitles off, or no decoder to run)
        self.visual_encoder = visual_encoder
        self.llm = llm.model
        self.tokenizer = llm.tokenizer
        self.llm_description = llm.description
        self.video_token_id = add_video_token(self.tokenizer)
        table = self.llm.get_input_embeddings().weight  # projectors live where the LLM's inputs do
        rows = table.detach()[:: max(1, len(table) // 4096)]  # a sample: a 7B model's table is 2 GB in float32
        hidden, scale = table.shape[1], float(rows.float().pow(2).mean().sqrt())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # an untrained model answers the same way every run
            self.visual_proj = MLPPoolProjector(
                visual_encoder.dim, hidden, config.visual_tokens_per_slot, visual_encoder.grid, scale
            )
            self.audio_proj = MLPPoolProjector(audio_encoder.dim, hidden, config.audio_tokens_per_slot, out_scale=scale)
            self.summary = (
                ClipSummary(
                    (self.visual_proj.input_dim, self.audio_proj.input_dim),
                    (config.visual_tokens_per_slot, config.audio_tokens_per_slot),
                    hidden,
                    config.summary_tokens,
                    out_scale=scale,
                )
                if config.summary_tokens
                else None
            )
        for proj in self.projectors().values():
            proj.to(table.device, table.dtype)
        self._marks: dict[str, list[int]] = {}
        self.engine: Engine | None = None  # answers through llama.cpp instead of the LLM's forward (use_engine)

    def projectors(self) -> dict[str, nn.Module]:
        """The trained modules between the encoders and the LLM, by the name their weights are saved under."""
        found = {"visual": self.visual_proj, "audio": self.audio_proj, "summary": self.summary}
        return {name: module for name, module in found.items() if module is not None}

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig, device: str | None = None) -> AVLLM:
        from .encoders.audio import WhisperAudioEncoder
        from .encoders.visual import CLIPVisualEncoder

        device = device or default_device()
        encoder_dtype = DTYPES[resolve_dtype(config.encoder_dtype, device, "encoder_dtype")]
        audio = WhisperAudioEncoder.from_spec(config.audio_encoder, device, encoder_dtype)
        visual = CLIPVisualEncoder.from_spec(config.visual_encoder, device, encoder_dtype, config.visual_pretrained)
        llm = load_llm(config.llm, config.quantization, config.dtype, device)
        source = ctranslate2_source(config.audio_encoder) if config.subtitles == "auto" else None
        if config.subtitles == "auto" and source is None:
            log.info("subtitles: auto, but faster-whisper cannot run %s; no subtitles", config.audio_encoder)
        transcriber = Transcriber(source, device, torch.get_num_threads()) if source else None
        return cls(config, audio, visual, llm, transcriber)

    @classmethod
    def load(cls, spec: str, device: str | None = None, merge_lora: bool = False, engine: str = "torch") -> AVLLM:
        """A preset name, a YAML file, a checkpoint folder or a checkpoint on the hub (hf:ORG/NAME).
        `merge_lora`, `engine`: see `from_pretrained`."""
        spec = hub.resolve(spec)
        if (Path(spec) / CONFIG_FILE).is_file():
            return cls.from_pretrained(spec, device, merge_lora, engine)
        model = cls.from_config(load_model_config(spec), device)
        model.use_engine(engine, None)
        return model

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | None = None, merge_lora: bool = False, engine: str = "torch"
    ) -> AVLLM:
        """`merge_lora`: add the LoRA adapter into the LLM's weights (answering only, not training;
        a quantized LLM or an adapter beyond plain LoRA stays apart) and, in bfloat16 on the CPU where
        torch answers, pack its linear layers for oneDNN: same answers, faster start-up and
        generation. `engine`: what generates answers (`use_engine`)."""
        folder = Path(folder)
        config = load_model_config(str(folder))
        model = cls.from_config(config, device)
        if config.lora is not None:
            if not (folder / ADAPTER_DIR).is_dir():
                raise ConfigError(f"{folder}: the config names a LoRA adapter but {ADAPTER_DIR}/ is missing")
            if not (merge_lora and config.quantization is None and merge_lora_weights(model.llm, folder / ADAPTER_DIR)):
                model.add_lora()
        model.load_trainable(folder)
        model.eval()
        model.use_engine(engine, folder / ADAPTER_DIR / ADAPTER_WEIGHTS if config.lora is not None else None)
        if merge_lora and not hasattr(model.llm, "peft_config") and model.engine is None:
            pack_linears(model.llm)
        return model

    def use_engine(self, engine: str, adapter: Path | None) -> None:
        """Generate answers with `engine`: "torch" (the LLM's forward passes), "llama.cpp" (the LLM,
        `adapter` added into it, written as a GGUF file for llama.cpp: several times faster on a
        CPU) or "auto" (llama.cpp where it can run). Call before the linear layers are packed."""
        device = str(self.llm.get_input_embeddings().weight.device)
        merged = not hasattr(self.llm, "peft_config")
        source = llamacpp.engine_source(engine, self.config, self.llm.config.model_type, device, merged)
        if source is not None:
            path = llamacpp.exported_gguf(self.llm, source, adapter)
            self.engine = llamacpp.LlamaCppDecoder(path, self.llm.dtype)

    def load_trainable(self, folder: str | Path) -> None:
        """Load the projectors and the LoRA weights saved in `folder` into this model (same shapes)."""
        folder = Path(folder)
        tensors = load_file(folder / PROJECTOR_FILE, device=str(self.llm.get_input_embeddings().weight.device))
        for name, proj in self.projectors().items():
            try:
                proj.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")})
            except RuntimeError as exc:
                raise ConfigError(
                    f"{folder}: the {name} projector weights do not fit this model (saved by another "
                    f"preset or an older avllm?); retrain, or remove the folder: {exc}"
                ) from None
        adapter_file = folder / ADAPTER_DIR / ADAPTER_WEIGHTS
        if hasattr(self.llm, "peft_config") and adapter_file.is_file():  # else: a fresh adapter starts here
            from peft import set_peft_model_state_dict

            adapter = load_file(adapter_file)
            result = set_peft_model_state_dict(self.llm, adapter)
            if result.unexpected_keys:
                raise ConfigError(f"{folder}: adapter weights do not fit this model: {result.unexpected_keys[:3]}")

    def save_pretrained(self, folder: str | Path) -> None:
        """Config JSON, projectors as safetensors, LoRA as a peft adapter folder; encoders and LLM by name."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(
            json.dumps({"format": CHECKPOINT_FORMAT, "model": to_dict(self.config)}, indent=2)
        )
        tensors = {
            f"{name}.{k}": v.detach().contiguous().cpu()
            for name, proj in self.projectors().items()
            for k, v in proj.state_dict().items()
        }
        save_file(tensors, folder / PROJECTOR_FILE)
        if hasattr(self.llm, "peft_config"):
            self.llm.save_pretrained(folder / ADAPTER_DIR)

    def add_lora(self) -> None:
        """Wrap the LLM with a fresh peft LoRA adapter described by config.lora."""
        from peft import LoraConfig, get_peft_model

        if self.config.lora is None:
            raise ConfigError("add_lora: the model config has no lora section")
        lora = self.config.lora
        peft_cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        self.llm = get_peft_model(self.llm, peft_cfg)

    # ---- media -> embeddings --------------------------------------------------------------
    def encode(self, clip: Clip) -> EncodedClip:
        """Run the frozen encoders on a decoded clip (timed, for the report).

        The sound of a long clip is pooled per slot as Whisper's windows are encoded, into what the
        audio projector's pooling would make of its 50 Hz features: an hour of them is never held."""
        timings = {}
        start = time.perf_counter()
        audio = None
        sound = clip.audio is not None and len(clip.audio) > 0
        heard = None  # the subtitles, decoded from each window of Whisper's output as the tower computes it
        if sound and self.transcriber is not None:
            heard = self.transcriber.begin(clip.audio, self.subtitles_full)
        tap = heard.add if heard is not None else None
        if sound and self.is_long(clip.duration):
            times = self._slot_times(clip.frame_times, len(clip.frames) > 0, clip.duration)
            frames = self.audio_encoder.num_frames(len(clip.audio))
            spans = audio_spans(slot_edges(times, clip.duration), self.audio_encoder.frame_rate, frames)
            bins = [(lo + a, lo + b) for lo, hi in spans if hi > lo for a, b in self.audio_proj.bins(hi - lo)]
            pooled = self.audio_encoder.range_means(clip.audio, np.array(bins), tap)
            audio = pooled.reshape(-1, self.audio_proj.tokens, pooled.shape[-1])
        elif sound:
            windows = []
            for _, feats in self.audio_encoder.windows([clip.audio], whole=True):
                windows.append(feats)
                if tap is not None:
                    tap(feats.numpy())
            audio = torch.cat(windows)[: self.audio_encoder.num_frames(len(clip.audio))]
        timings["encode_audio"] = time.perf_counter() - start - (heard.seconds if heard is not None else 0.0)
        start = time.perf_counter()
        visual = self.visual_encoder(clip.frames) if len(clip.frames) else None
        timings["encode_visual"] = time.perf_counter() - start
        enc = EncodedClip(visual, clip.frame_times, audio, clip.duration, clip.facts, timings)
        if heard is not None:
            self.set_subtitles(enc, heard.segments())
            timings["transcribe"] = heard.seconds
        return enc

    def set_subtitles(self, enc: EncodedClip, segments: list[Segment]) -> None:
        """Give `enc` the segments that fit the subtitle budget: whole segments in time order, the
        first ones kept, so the prompt never grows past config.subtitle_tokens for them."""
        used = 0
        for count, segment in enumerate(segments):
            used += self._subtitle_tokens(segment)
            if used > self.config.subtitle_tokens:
                enc.subtitles, enc.subtitles_left_out = segments[:count], len(segments) - count
                return
        enc.subtitles, enc.subtitles_left_out = list(segments), 0

    def subtitles_full(self, segments: list[Segment]) -> bool:
        """Whether `segments` overflow the subtitle budget: transcribing further would add nothing to
        the prompt (the report still says that subtitles were left out)."""
        return sum(self._subtitle_tokens(s) for s in segments) > self.config.subtitle_tokens

    def _subtitle_tokens(self, segment: Segment) -> int:
        return len(self.tokenizer.encode(subtitle_text(segment), add_special_tokens=False))

    def is_long(self, duration: float) -> bool:
        return duration > self.config.media.long_clip

    def _slot_times(self, frame_times: np.ndarray, has_visual: bool, duration: float) -> np.ndarray:
        if has_visual:
            return np.asarray(frame_times, dtype=np.float64)
        return sample_times(duration, self.config.media)[0]

    def slot_times(self, enc: EncodedClip) -> np.ndarray:
        return self._slot_times(enc.frame_times, enc.visual is not None, enc.duration)

    def slot_features(self, enc: EncodedClip) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Per time slot: the frame's patch tokens and the audio frames of its time span (None: absent)."""
        times = self.slot_times(enc)
        audio_slots: list[torch.Tensor | None] = [None] * len(times)
        if enc.audio is not None and enc.audio.dim() == 3:  # a long clip's, pooled per slot already
            audio_slots[: len(enc.audio)] = list(enc.audio)
        elif enc.audio is not None:
            spans = audio_spans(slot_edges(times, enc.duration), self.audio_encoder.frame_rate, len(enc.audio))
            audio_slots = [enc.audio[lo:hi] if hi > lo else None for lo, hi in spans]
        visual_slots = list(enc.visual) if enc.visual is not None else [None] * len(times)
        return visual_slots, audio_slots

    def unheard(self, enc: EncodedClip) -> list[bool]:
        """Per slot: whether it starts after the sound was cut at media.max_audio_seconds. Such a slot has
        no audio tokens: the absent embedding would tell the LLM the clip is silent there, and it is not."""
        edges = slot_edges(self.slot_times(enc), enc.duration)
        cut = enc.facts is not None and enc.facts.audio_cut
        return [cut and start >= enc.facts.audio_seconds for start in edges[:-1]]

    def media_embeds(self, enc: EncodedClip) -> torch.Tensor:
        """[slots * (visual + audio tokens) + summary tokens, hidden], slot by slot in time order."""
        visual_slots, audio_slots = self.slot_features(enc)
        visual, audio = self.visual_proj.standardized(visual_slots), self.audio_proj.standardized(audio_slots)
        both = torch.cat([self.visual_proj(visual_slots, visual), self.audio_proj(audio_slots, audio)], dim=1)
        unheard = self.unheard(enc)
        slots = (
            torch.cat([b[: self.config.visual_tokens_per_slot] if u else b for b, u in zip(both, unheard)])
            if any(unheard)
            else both.reshape(-1, both.shape[-1])
        )
        return (
            torch.cat([slots, self.summary([visual[0], audio[0]]).to(slots.dtype)])
            if self.summary is not None
            else slots
        )

    def fit_projector_inputs(self, clips: list[EncodedClip]) -> None:
        """Fit both projectors' input standardisation on these clips' features (fresh projectors only)."""
        slots = [self.slot_features(enc) for enc in clips]
        for name, proj, side in (("visual", self.visual_proj, 0), ("audio", self.audio_proj, 1)):
            if not proj.fit_input_stats([x for pair in slots for x in pair[side]]):
                log.warning(
                    "no %s features among %d clips: the %s projector's inputs stay unstandardised",
                    name,
                    len(clips),
                    name,
                )

    def layout(self, enc: EncodedClip) -> list[int]:
        """What replaces <video>: per slot an optional time mark (always in a long clip, so that "when"
        can be answered), one placeholder per media token and the subtitles that start in the slot (as
        text), or "[no speech]" after the slots when the model transcribes and heard none (a clip
        without sound included), so that no speech is said in the text and not only left unquoted,
        and "[no picture]" for a file without a video track, so that no picture is described;
        then the clip's summary tokens."""
        visual, audio = [self.video_token_id] * self.config.visual_tokens_per_slot, self.config.audio_tokens_per_slot
        long = self.is_long(enc.duration)
        times = self.slot_times(enc)
        slot_of_speech = np.searchsorted(
            slot_edges(times, enc.duration)[1:-1], [s.start for s in enc.subtitles], "right"
        )
        ids: list[int] = []
        for slot, (t, unheard) in enumerate(zip(times, self.unheard(enc))):
            if long:
                ids += self.mark_ids(f" t={clock(t)}")
            elif self.config.time_marks:
                ids += self.mark_ids(f" t={t:.1f}s")
            ids += visual + [self.video_token_id] * (0 if unheard else audio)
            for segment, where in zip(enc.subtitles, slot_of_speech):
                if where == slot:  # the words follow the slot in which they start
                    ids += self.tokenizer.encode(subtitle_text(segment), add_special_tokens=False)
        if self.transcriber is not None and not enc.subtitles and not enc.subtitles_left_out:
            ids += self.mark_ids(NO_SPEECH)
        if enc.visual is None:
            ids += self.mark_ids(NO_PICTURE)
        return ids + [self.video_token_id] * self.config.summary_tokens

    def mark_ids(self, text: str) -> list[int]:
        if text not in self._marks:
            self._marks[text] = self.tokenizer.encode(text, add_special_tokens=False)
        return self._marks[text]

    # ---- text + media -> LLM --------------------------------------------------------------
    @property
    def base_llm(self) -> Any:
        """The LLM without its peft wrapper (the same model when it carries no adapter)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def tokenize(self, messages: list[Message], enc: EncodedClip, add_generation_prompt: bool) -> ChatTokens:
        """Chat template, label masks, then <video> expanded into this clip's slot layout."""
        return expand_placeholders(
            encode_chat(self.tokenizer, messages, add_generation_prompt), self.video_token_id, [self.layout(enc)]
        )

    def embed(self, input_ids: torch.Tensor, media: list[EncodedClip]) -> torch.Tensor:
        """Token embeddings with the media embeddings scattered into the placeholder positions."""
        mask = input_ids == self.video_token_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        media_embeds = (
            torch.cat([self.media_embeds(e) for e in media]) if media else embeds.new_zeros(0, embeds.shape[-1])
        )
        if int(mask.sum()) != media_embeds.shape[0]:
            raise SpliceError(
                f"the prompt holds {int(mask.sum())} media placeholder tokens but the clips give "
                f"{media_embeds.shape[0]} media embeddings; build prompts with AVLLM.tokenize"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), media_embeds.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: list[EncodedClip],
        labels: torch.Tensor | None = None,
    ) -> Any:
        """Without labels, the LLM's output. With labels, the next-token loss averaged within each
        conversation, then over the conversations, so that every conversation weighs the same: with
        a plain token mean, a 10-token description outweighs a one-word answer ten times. Logits are
        computed only at labelled positions: the vocabulary projection is about a fifth of a small
        LLM's work, and most positions (the media, the question) carry no label.
        """
        if labels is None:
            return self.llm(inputs_embeds=self.embed(input_ids, media), attention_mask=attention_mask)
        logits, targets, keep = self.label_logits(input_ids, attention_mask, media, labels)
        token_loss = F.cross_entropy(logits, targets, reduction="none")
        sums = token_loss.new_zeros(len(labels)).index_add(0, keep.nonzero()[:, 0], token_loss)
        counts = keep.sum(1)
        loss = (sums[counts > 0] / counts[counts > 0]).mean()
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def label_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: list[EncodedClip], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 logits [K, vocab] predicting the K labelled tokens, those tokens [K], and where
        they sit ([B, L-1] mask over next-token positions)."""
        base = self.base_llm
        hidden = base.get_decoder()(
            inputs_embeds=self.embed(input_ids, media), attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        return base.get_output_embeddings()(hidden[:, :-1][keep]).float(), targets[keep], keep

    def sequence_logps(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: list[EncodedClip], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the summed log-probability of its labelled tokens, and how many there are (DPO)."""
        logits, targets, keep = self.label_logits(input_ids, attention_mask, media, labels)
        token_logps = torch.log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1)
        rows = keep.nonzero()[:, 0]
        sums = token_logps.new_zeros(len(labels)).index_add(0, rows, token_logps)
        return sums, keep.sum(1)

    def stream(
        self,
        messages: list[Message],
        enc: EncodedClip,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        timings: dict[str, float] | None = None,
        counts: dict[str, int] | None = None,
    ) -> Iterator[str]:
        """Generate an answer to the conversation, yielding text pieces as they are decoded, in the
        caller's thread (decoding.py says why).

        `timings` receives `prefill` (the LLM's first forward pass over the prompt), `counts`
        `generated` (tokens generated, end-of-turn included: what an API bills). Closing the
        iterator early (a client that went away) stops generation at the next token.
        """
        device = self.llm.get_input_embeddings().weight.device
        ids = torch.tensor([self.tokenize(messages, enc, add_generation_prompt=True).input_ids], device=device)
        with torch.inference_mode():
            embeds = self.embed(ids, [enc])
        counts = counts if counts is not None else {}
        counts["generated"] = 0

        def counted() -> Iterator[int]:
            for token in generate_ids(self.llm, embeds, max_new_tokens, temperature, timings, self.engine):
                counts["generated"] += 1
                yield token

        yield from stream_text(self.tokenizer, counted())


def fold_input_whitening(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Projector weights with each input whitening matrix folded into the linear layers that read the
    whitened inputs (the projector's first layer and the summary's squeeze): x @ W then A is x then
    A @ W.T. The same outputs, without a [D, D] matrix per stream (4.7 MB for the starter's CLIP)."""
    out = dict(tensors)
    for index, name in enumerate(("visual", "audio")):  # the summary's squeeze layers, in this order
        whiten = out.pop(f"{name}.feature_whiten", None)
        if whiten is None:
            continue
        for key in (f"{name}.mlp.0.weight", f"summary.squeeze.{index}.weight"):
            if key in out:
                out[key] = (out[key].double() @ whiten.double().T).to(out[key].dtype)
    return out


def export_checkpoint(src: str | Path, dst: str | Path, dtype: str = "bfloat16") -> list[Path]:
    """Copy what a checkpoint trained (config, projectors, LoRA adapter) with the weights stored in
    `dtype`, leaving out optimizer states and logs. Training keeps float32 masters, but the starter
    computes in bfloat16, and its weights ship in the repo only at half the size; the input whitening
    is folded into the projectors' weights. Returns the files."""
    src, dst = Path(src), Path(dst)
    config = load_model_config(str(src))  # refuses a folder that is not a checkpoint
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
    if dst.resolve() == src.resolve():
        raise ConfigError(f"{dst}: export to another folder than the checkpoint itself")
    files = [Path(CONFIG_FILE), Path(PROJECTOR_FILE)]
    if (src / ADAPTER_DIR).is_dir():
        files += [Path(ADAPTER_DIR) / "adapter_config.json", Path(ADAPTER_DIR) / ADAPTER_WEIGHTS]
    for name in files:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        if name.suffix == ".safetensors":
            tensors = load_file(src / name)
            tensors = fold_input_whitening(tensors) if name.name == PROJECTOR_FILE else tensors
            save_file(
                {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in tensors.items()},
                dst / name,
                metadata={"format": "pt"},
            )
        elif name.name == "adapter_config.json":  # peft wrote this machine's path to the LLM; name it portably
            adapter = json.loads((src / name).read_text())
            (dst / name).write_text(json.dumps({**adapter, "base_model_name_or_path": config.llm}, indent=2))
        else:
            (dst / name).write_bytes((src / name).read_bytes())
    return [dst / name for name in files]
