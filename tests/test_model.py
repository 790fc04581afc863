"""AVLLM on tiny random parts: interleave order, splice checks, streaming, save/load, 4-bit."""

import json
import time

import numpy as np
import pytest
import torch
from conftest import write_clip
from factories import greedy_generate, tiny_llm_folder, tiny_model_fields

from avllm.config import LoraConfig, MediaConfig, ModelConfig
from avllm.errors import ConfigError, SpliceError
from avllm.media import load_clip
from avllm.model import AVLLM, EncodedClip, export_checkpoint, slot_edges
from avllm.prompt import with_video

KV, KA = 4, 2


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_model_fields(tmp_path_factory.mktemp("tiny"))


def make_config(parts, **overrides) -> ModelConfig:
    settings = dict(visual_tokens_per_slot=KV, audio_tokens_per_slot=KA, media=MediaConfig(num_frames=3))
    settings.update(overrides)
    return ModelConfig(**parts, **settings)


@pytest.fixture(scope="module")
def model(parts):
    return AVLLM.from_config(make_config(parts), device="cpu")


def encoded(model, frames=3, duration=3.0, audio=True, visual=True) -> EncodedClip:
    gen = torch.Generator().manual_seed(1)
    times = (np.arange(frames) + 0.5) * duration / frames
    vis = torch.randn(frames, model.visual_encoder.num_patches, model.visual_encoder.dim, generator=gen)
    aud = torch.randn(int(duration * 50), model.audio_encoder.dim, generator=gen)
    return EncodedClip(vis if visual else None, times if visual else np.zeros(0), aud if audio else None, duration)


def test_slot_edges_split_between_frames():
    assert slot_edges(np.array([0.5, 1.5, 2.5]), 3.0).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_interleave_is_frame_then_its_audio_in_time_order(model):
    enc = encoded(model)
    out = model.media_embeds(enc)
    assert out.shape == (3 * (KV + KA), model.llm.config.hidden_size)
    for i in range(3):
        visual = model.visual_proj([enc.visual[i]])[0]
        audio = model.audio_proj([enc.audio[i * 50 : (i + 1) * 50]])[0]
        block = out[i * (KV + KA) : (i + 1) * (KV + KA)]
        torch.testing.assert_close(block[:KV], visual)
        torch.testing.assert_close(block[KV:], audio)


def test_missing_audio_and_missing_picture_use_the_absent_embeddings(model):
    silent = model.media_embeds(encoded(model, audio=False)).reshape(3, KV + KA, -1)
    torch.testing.assert_close(silent[:, KV:], model.audio_proj.absent.expand(3, KA, -1))
    sound_only = model.media_embeds(encoded(model, visual=False)).reshape(-1, KV + KA, silent.shape[-1])
    assert len(sound_only) == model.config.media.num_frames  # uniform slots over the sound
    torch.testing.assert_close(sound_only[:, :KV], model.visual_proj.absent.expand(len(sound_only), KV, -1))


def test_audio_that_ends_early_leaves_later_slots_absent(model):
    enc = encoded(model)
    enc.audio = enc.audio[:60]  # 1.2 s of a 3 s clip: slot 2 (2 s to 3 s) hears nothing
    out = model.media_embeds(enc).reshape(3, KV + KA, -1)
    torch.testing.assert_close(out[2, KV:], model.audio_proj.absent)
    assert not torch.allclose(out[1, KV:], model.audio_proj.absent)


def test_slots_after_the_sound_was_cut_by_a_limit_have_no_audio_tokens(model, av_clip):
    """Absent audio tokens would tell the LLM the clip is silent there; it is only unheard."""
    clip = load_clip(av_clip, MediaConfig(num_frames=3, max_audio_seconds=1.5))  # slots from 0, 1.33, 2.67 s
    enc = model.encode(clip)
    assert model.unheard(enc) == [False, False, True]
    out = model.media_embeds(enc)
    assert out.shape[0] == 3 * KV + 2 * KA
    torch.testing.assert_close(out[-KV:], model.visual_proj([enc.visual[2]])[0])  # the last slot: its frame alone
    assert not torch.allclose(out[KV + KA + KV : 2 * (KV + KA)], model.audio_proj.absent)  # heard in part
    ids = torch.tensor([model.tokenize([{"role": "user", "content": with_video("?")}], enc, True).input_ids])
    torch.testing.assert_close(model.embed(ids, [enc])[0, ids[0] == model.video_token_id], out)


def test_short_clips_take_the_path_of_before_bit_for_bit(model, av_clip):
    """The shipped weights were trained on these inputs: a clip up to media.long_clip is encoded, cut into
    slots, projected and laid out exactly as before long clips were handled (that path written out here)."""
    clip = load_clip(av_clip, model.config.media)
    enc = model.encode(clip)
    assert torch.equal(enc.audio, model.audio_encoder([clip.audio])[0])
    assert torch.equal(enc.visual, model.visual_encoder(clip.frames))
    edges = slot_edges(clip.frame_times, clip.duration)
    before = [enc.audio[int(a * 50) : max(int(np.ceil(b * 50)), int(a * 50) + 1)] for a, b in zip(edges, edges[1:])]
    visual_slots, audio_slots = model.slot_features(enc)
    assert all(torch.equal(x, y) for x, y in zip(audio_slots, before, strict=True))
    reference = torch.cat([model.visual_proj(list(enc.visual)), model.audio_proj(before)], dim=1).flatten(0, 1)
    assert torch.equal(model.media_embeds(enc), reference)
    assert model.layout(enc) == [model.video_token_id] * (len(clip.frame_times) * (KV + KA))


def test_a_long_clip_is_pooled_as_it_is_encoded_into_the_projector_inputs_of_before(parts, clip_dir):
    path = write_clip(clip_dir / "seventy_seconds.mp4", seconds=70.0, fps=2)  # three Whisper windows
    whole = AVLLM.from_config(make_config(parts, media=MediaConfig(num_frames=5, long_clip=3600.0)), device="cpu")
    long = AVLLM.from_config(make_config(parts, media=MediaConfig(num_frames=5, long_clip=60.0)), device="cpu")
    clip = load_clip(path, whole.config.media)
    assert len(clip.frame_times) == 5  # one per 15 s would be 5 too
    full, pooled = whole.encode(clip), long.encode(clip)
    assert full.audio.shape[0] >= 3500 and pooled.audio.shape == (5, KA, long.audio_encoder.dim)
    torch.testing.assert_close(long.media_embeds(pooled), whole.media_embeds(full), atol=1e-5, rtol=1e-4)
    marks = long.tokenizer.decode(long.layout(pooled))
    assert [marks.find(f"t={m}") for m in ("0:07", "0:21", "0:35", "0:49", "1:03")] == sorted(
        marks.find(f"t={m}") for m in ("0:07", "0:21", "0:35", "0:49", "1:03")
    )
    assert "t=" not in whole.tokenizer.decode(whole.layout(full)) and marks.count("<video>") == 5 * (KV + KA)


def test_layout_and_splice_positions(model):
    enc = encoded(model)
    tokens = model.tokenize([{"role": "user", "content": with_video("what?")}], enc, add_generation_prompt=True)
    ids = torch.tensor([tokens.input_ids])
    assert int((ids == model.video_token_id).sum()) == 3 * (KV + KA)
    embeds = model.embed(ids, [enc])
    mask = ids[0] == model.video_token_id
    torch.testing.assert_close(embeds[0, mask], model.media_embeds(enc))
    text = model.llm.get_input_embeddings()(ids[0, ~mask])
    torch.testing.assert_close(embeds[0, ~mask], text)


def test_a_file_without_a_picture_says_so_in_the_prompt(model):
    from avllm.model import NO_PICTURE

    def marked(enc: EncodedClip) -> bool:
        return NO_PICTURE.strip() in model.tokenizer.decode(model.layout(enc))

    assert (
        marked(encoded(model, visual=False)) and not marked(encoded(model)) and not marked(encoded(model, audio=False))
    )


def test_summary_tokens_follow_the_slots_and_read_every_slot(parts):
    summed = AVLLM.from_config(make_config(parts, summary_tokens=2), device="cpu")
    enc = encoded(summed)
    tokens = summed.tokenize([{"role": "user", "content": with_video("what?")}], enc, add_generation_prompt=True)
    ids = torch.tensor([tokens.input_ids])
    assert int((ids == summed.video_token_id).sum()) == 3 * (KV + KA) + 2
    out = summed.media_embeds(enc)
    torch.testing.assert_close(summed.embed(ids, [enc])[0, ids[0] == summed.video_token_id], out)
    plain = AVLLM.from_config(make_config(parts), device="cpu")  # same seed: the same slot projectors
    torch.testing.assert_close(out[:-2], plain.media_embeds(enc))
    for change in ("visual", "audio"):  # the last frame or the last sound alone moves the summary
        other = encoded(summed)
        getattr(other, change)[-1] += 1.0
        moved = summed.media_embeds(other)
        assert not torch.allclose(moved[-2:], out[-2:])
        torch.testing.assert_close(moved[: 2 * (KV + KA)], out[: 2 * (KV + KA)])


def test_time_marks_come_before_each_slot(parts):
    marked = AVLLM.from_config(make_config(parts, time_marks=True), device="cpu")
    enc = encoded(marked)
    text = marked.tokenizer.decode(marked.layout(enc))
    assert [text.find(f"t={t:.1f}s") for t in enc.frame_times] == sorted(
        text.find(f"t={t:.1f}s") for t in enc.frame_times
    )
    assert text.count("<video>") == 3 * (KV + KA)


def test_placeholder_count_mismatch_is_refused(model):
    enc = encoded(model)
    tokens = model.tokenize([{"role": "user", "content": with_video("what?")}], enc, add_generation_prompt=True)
    ids = torch.tensor([tokens.input_ids[:-20] + tokens.input_ids[-10:]])  # drop some placeholders
    with pytest.raises(SpliceError, match="placeholder tokens"):
        model.embed(ids, [enc])
    with pytest.raises(SpliceError):
        model.embed(torch.tensor([tokens.input_ids]), [enc, enc])


def test_stream_equals_greedy_generate(model):
    enc = encoded(model)
    messages = [{"role": "user", "content": with_video("what?")}]
    timings, counts = {}, {}
    pieces = list(model.stream(messages, enc, max_new_tokens=12, timings=timings, counts=counts))
    out = greedy_generate(model, messages, enc, 12)
    assert "".join(pieces) == model.tokenizer.decode(out, skip_special_tokens=True)
    assert len(pieces) > 1 and timings["prefill"] > 0
    assert counts["generated"] == len(out)  # exact, not a re-tokenisation of the text


def test_the_answer_is_generated_in_the_caller_s_thread(model, monkeypatch):
    """A worker thread's OpenMP team made every decoding step slower (decoding.py)."""
    import threading

    seen = set()
    forward = model.llm.forward
    monkeypatch.setattr(model.llm, "forward", lambda *a, **k: seen.add(threading.get_ident()) or forward(*a, **k))
    assert list(model.stream([{"role": "user", "content": with_video("what?")}], encoded(model), 4))
    assert seen == {threading.get_ident()}


def test_an_answer_stepped_from_a_new_thread_each_time_is_the_same(model):
    """Gradio advances a streaming handler from its worker threads, one step in any of them."""
    from concurrent.futures import ThreadPoolExecutor

    messages = [{"role": "user", "content": with_video("what?")}]
    stream = model.stream(messages, encoded(model), 12)
    pieces = []
    while (piece := ThreadPoolExecutor(1).submit(next, stream, None).result()) is not None:
        pieces.append(piece)
    assert pieces == list(model.stream(messages, encoded(model), 12))


def test_sampled_answers_keep_the_generation_config_s_suppressed_tokens(model, monkeypatch):
    monkeypatch.setattr(model.llm.generation_config, "eos_token_id", None)
    allowed = model.tokenizer.encode(" red square", add_special_tokens=False)
    suppressed = [i for i in range(model.llm.config.vocab_size) if i not in allowed]
    monkeypatch.setattr(model.llm.generation_config, "suppress_tokens", suppressed)
    messages = [{"role": "user", "content": with_video("what?")}]
    torch.manual_seed(0)
    counts = {}
    text = "".join(model.stream(messages, encoded(model), 20, temperature=1.5, counts=counts))
    assert counts["generated"] == 20 and set(model.tokenizer.encode(text, add_special_tokens=False)) <= set(allowed)


def test_streamed_text_holds_back_half_a_character(model):
    from avllm.decoding import stream_text

    ids = model.tokenizer.encode("A dog says 你好 ☕ hello", add_special_tokens=False)
    assert len(ids) > len("A dog says 你好 ☕ hello".split())  # byte-level: the characters span tokens
    pieces = list(stream_text(model.tokenizer, iter(ids)))
    assert "".join(pieces) == "A dog says 你好 ☕ hello" and not any("\ufffd" in p for p in pieces)
    k = next(k for k in range(len(ids)) if model.tokenizer.decode(ids[:k]).endswith("\ufffd"))
    cut = list(stream_text(model.tokenizer, iter(ids[:k])))  # an answer cut inside a character: given whole
    assert "".join(cut) == model.tokenizer.decode(ids[:k]) and cut[-1].endswith("\ufffd")


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU does not compute in bfloat16")
def test_packed_linear_layers_give_the_same_bfloat16_outputs(parts):
    from avllm.llm import PackedLinear, pack_linears

    plain = AVLLM.from_config(make_config(parts, dtype="bfloat16"), device="cpu")
    packed = AVLLM.from_config(make_config(parts, dtype="bfloat16"), device="cpu")
    assert pack_linears(packed.llm) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the output layer
    assert isinstance(packed.llm.lm_head, PackedLinear) and not any(
        type(m) is torch.nn.Linear for m in packed.llm.modules()
    )
    enc = encoded(plain)
    for prompt in ("what?", "Describe the sound and the picture in detail, please."):
        ids = torch.tensor([plain.tokenize([{"role": "user", "content": with_video(prompt)}], enc, True).input_ids])
        with torch.inference_mode():
            a = plain(ids, torch.ones_like(ids), [enc]).logits
            b = packed(ids, torch.ones_like(ids), [enc]).logits
        assert torch.equal(a, b)
    messages = [{"role": "user", "content": with_video("what?")}]
    assert list(packed.stream(messages, enc, 12)) == list(plain.stream(messages, enc, 12))


def test_each_conversation_weighs_the_same_in_the_loss(model):
    """A long answer and a one-word answer in one batch: the loss is the mean of their own losses."""
    from avllm.data.dataset import Collator

    enc = encoded(model)
    rows = []
    for answer in ("Yes.", "A dog runs across the grass while a man speaks and music plays."):
        messages = [{"role": "user", "content": with_video("what?")}, {"role": "assistant", "content": answer}]
        tokens = model.tokenize(messages, enc, add_generation_prompt=False)
        rows.append({"input_ids": tokens.input_ids, "labels": tokens.labels, "media": enc})
    batch = Collator(model.tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        both = model(batch["input_ids"], batch["attention_mask"], batch["media"], labels=batch["labels"]).loss
        alone = [
            model(
                torch.tensor([r["input_ids"]]),
                torch.ones(1, len(r["input_ids"]), dtype=torch.long),
                [enc],
                labels=torch.tensor([r["labels"]]),
            ).loss
            for r in rows
        ]
    torch.testing.assert_close(both, torch.stack(alone).mean(), rtol=1e-4, atol=1e-4)
    assert abs(float(alone[0] - alone[1])) > 1e-3  # the two rows differ, so a token mean would differ


def test_loss_ignores_everything_but_labels(model):
    enc = encoded(model)
    messages = [{"role": "user", "content": with_video("what?")}, {"role": "assistant", "content": "A dog."}]
    tokens = model.tokenize(messages, enc, add_generation_prompt=False)
    ids, labels = torch.tensor([tokens.input_ids]), torch.tensor([tokens.labels])
    out = model(ids, torch.ones_like(ids), [enc], labels=labels)
    full = model.llm(inputs_embeds=model.embed(ids, [enc]), attention_mask=torch.ones_like(ids), labels=labels)
    torch.testing.assert_close(out.loss, full.loss)  # logits only where labels are: the same loss
    assert out.logits.shape[0] == int((labels[:, 1:] != -100).sum())
    out.loss.backward()
    assert model.visual_proj.mlp[0].weight.grad is not None and model.audio_proj.mlp[0].weight.grad is not None
    model.zero_grad(set_to_none=True)


def saved_with_lora(parts, folder) -> AVLLM:
    """A model with every trainable kind (projectors, summary, LoRA) made non-trivial, saved in `folder`."""
    config = make_config(
        parts, summary_tokens=2, lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    model = AVLLM.from_config(config, device="cpu")
    model.add_lora()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "_proj.absent" in name:
                p.add_(0.1)
    model.fit_projector_inputs([encoded(model)])  # fitted statistics travel with the weights
    model.save_pretrained(folder)
    return model.eval()


def logits(model, enc) -> torch.Tensor:
    ids = torch.tensor([model.tokenize([{"role": "user", "content": with_video("what?")}], enc, True).input_ids])
    with torch.no_grad():
        return model(ids, torch.ones_like(ids), [enc]).logits


def test_save_and_load_round_trip_with_lora(parts, tmp_path):
    model = saved_with_lora(parts, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "adapter",
        "avllm_config.json",
        "projectors.safetensors",
    ]
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").is_file()
    loaded = AVLLM.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.config == model.config
    enc = encoded(model)
    torch.testing.assert_close(logits(loaded, enc), logits(model, enc), rtol=0, atol=0)


def test_stream_reports_prefill_with_a_lora_adapter(parts, tmp_path):
    model = saved_with_lora(parts, tmp_path / "ckpt")
    timings = {}
    pieces = list(model.stream([{"role": "user", "content": with_video("what?")}], encoded(model), 4, timings=timings))
    assert pieces and 0 < timings["prefill"]


def test_a_merged_adapter_gives_the_adapter_s_outputs(parts, tmp_path):
    model = saved_with_lora(parts, tmp_path / "ckpt")
    merged = AVLLM.from_pretrained(tmp_path / "ckpt", device="cpu", merge_lora=True)
    assert not hasattr(merged.llm, "peft_config")
    base = merged.llm.state_dict()
    plain = AVLLM.from_config(model.config, device="cpu").llm.state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], base[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    enc = encoded(model)
    torch.testing.assert_close(logits(merged, enc), logits(model, enc), rtol=1e-4, atol=1e-5)
    messages = [{"role": "user", "content": with_video("what?")}]
    assert list(merged.stream(messages, enc, 12)) == list(model.stream(messages, enc, 12))


def test_an_adapter_beyond_plain_lora_stays_apart(parts, tmp_path):
    saved_with_lora(parts, tmp_path / "ckpt")
    adapter = tmp_path / "ckpt" / "adapter" / "adapter_config.json"
    adapter.write_text(json.dumps({**json.loads(adapter.read_text()), "use_dora": True}))
    assert hasattr(AVLLM.from_pretrained(tmp_path / "ckpt", device="cpu", merge_lora=True).llm, "peft_config")


def test_export_stores_the_trained_weights_in_half_precision(parts, tmp_path):
    from safetensors.torch import load_file

    model = saved_with_lora(parts, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "checkpoint-5").mkdir()  # optimizer states and logs stay behind
    files = export_checkpoint(tmp_path / "ckpt", tmp_path / "ship")
    assert sorted(str(f.relative_to(tmp_path / "ship")) for f in files) == sorted(
        [
            "avllm_config.json",
            "projectors.safetensors",
            "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors",
        ]
    )
    assert sorted(p.name for p in (tmp_path / "ship").iterdir()) == [
        "adapter",
        "avllm_config.json",
        "projectors.safetensors",
    ]
    whitening = {"visual.feature_whiten", "audio.feature_whiten"}  # folded into the layers that read them
    for name in ("projectors.safetensors", "adapter/adapter_model.safetensors"):
        full, half = load_file(tmp_path / "ckpt" / name), load_file(tmp_path / "ship" / name)
        assert half.keys() == full.keys() - whitening and {v.dtype for v in half.values()} == {torch.bfloat16}
    assert whitening <= load_file(tmp_path / "ckpt" / "projectors.safetensors").keys()
    adapter = json.loads((tmp_path / "ship" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == model.config.llm and adapter["r"] == 4
    enc = encoded(model)
    ship = AVLLM.from_pretrained(tmp_path / "ship", device="cpu")
    assert ship.visual_proj.feature_whiten is None and ship.audio_proj.feature_whiten is None
    with torch.no_grad():  # the media tokens, the summary's included, survive the fold
        shipped, trained = ship.media_embeds(enc).float(), model.media_embeds(enc).float()
    assert (shipped - trained).norm() / trained.norm() < 0.03  # bfloat16 rounding (~1%), nothing lost or misplaced
    shipped, trained = logits(ship, enc), logits(model, enc)
    assert (shipped - trained).norm() / trained.norm() < 0.05  # more: the whitening was fitted on one clip
    with pytest.raises(ConfigError, match="another folder"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="dtype"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "other", dtype="int8")


def test_projector_weights_that_do_not_fit_are_refused_by_name(model, parts, tmp_path):
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path / "ckpt")
    tensors = load_file(tmp_path / "ckpt" / "projectors.safetensors")
    tensors["visual.norm.weight"] = tensors.pop("visual.feature_mean")  # a projector from an older layout
    save_file(tensors, tmp_path / "ckpt" / "projectors.safetensors")
    fresh = AVLLM.from_config(make_config(parts), device="cpu")
    with pytest.raises(ConfigError, match="visual projector weights do not fit"):
        fresh.load_trainable(tmp_path / "ckpt")


def test_four_bit_load_runs_on_cpu(parts, tmp_path):
    from bitsandbytes.nn import Linear4bit

    wide_llm = str(tiny_llm_folder(tmp_path, hidden=64))  # bitsandbytes quantizes in blocks of 64
    model = AVLLM.from_config(make_config({**parts, "llm": wide_llm}, quantization="nf4"), device="cpu")
    assert any(isinstance(m, Linear4bit) for m in model.llm.modules())
    enc = encoded(model)
    pieces = list(model.stream([{"role": "user", "content": with_video("what?")}], enc, max_new_tokens=4))
    assert pieces


def test_closing_the_stream_stops_generation(model, monkeypatch):
    monkeypatch.setattr(model.llm.generation_config, "eos_token_id", None)  # it would run all 5000 tokens
    enc = encoded(model)
    stream = model.stream([{"role": "user", "content": with_video("what?")}], enc, max_new_tokens=5000)
    next(stream)
    start = time.perf_counter()
    stream.close()
    assert time.perf_counter() - start < 2


def test_visual_tokens_hold_the_mean_and_the_max_of_their_region_and_audio_tokens_the_mean():
    from avllm.projector.mlp_pool import MLPPoolProjector

    visual = MLPPoolProjector(in_dim=3, out_dim=8, tokens=4, grid=(4, 4))
    patches = torch.zeros(1, 16, 3)
    patches[0, 0, 0] = 8.0  # one bright patch in the top-left 2x2 region
    pooled = visual.pool(patches)
    assert pooled.shape == (1, 4, 6) and visual.input_dim == 6
    assert pooled[0, 0].tolist() == [2.0, 0.0, 0.0, 8.0, 0.0, 0.0]  # mean over 4 patches, then max
    assert not pooled[0, 1:].any()
    audio = MLPPoolProjector(in_dim=3, out_dim=8, tokens=2)
    frames = torch.arange(12.0).view(1, 4, 3)
    torch.testing.assert_close(audio.pool(frames), torch.tensor([[[1.5, 2.5, 3.5], [7.5, 8.5, 9.5]]]))
    assert audio.input_dim == 3


def test_fitted_projector_inputs_are_standardised():
    from avllm.projector.mlp_pool import MLPPoolProjector

    proj = MLPPoolProjector(in_dim=6, out_dim=8, tokens=2)
    gen = torch.Generator().manual_seed(0)
    slots = [torch.randn(10, 6, generator=gen) * torch.arange(1, 7) + 5 for _ in range(20)] + [None]
    assert proj.fit_input_stats(slots)
    pooled = torch.cat([proj.pool(x.unsqueeze(0)) for x in slots if x is not None]).flatten(0, 1)
    standard = (pooled - proj.feature_mean) / proj.feature_std
    torch.testing.assert_close(standard.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.std(0), torch.ones(6), atol=1e-5, rtol=0)
    before = proj.feature_mean.clone()
    assert not proj.fit_input_stats([None, None])  # nothing of this kind: left as it was
    assert torch.equal(proj.feature_mean, before)


def test_fitted_projector_inputs_are_whitened():
    """Inputs sharing a strong common component (correlation 0.8) come out with every direction at
    about unit variance: the shrinkage (0.1) keeps the weakest at 0.2 / 0.3 of it."""
    from avllm.projector.mlp_pool import MLPPoolProjector

    proj = MLPPoolProjector(in_dim=6, out_dim=8, tokens=2)
    gen = torch.Generator().manual_seed(0)
    slots = [torch.randn(10, 6, generator=gen) + 2 * torch.randn(10, 1, generator=gen) for _ in range(200)]
    pooled = torch.cat([proj.pool(x.unsqueeze(0)) for x in slots]).flatten(0, 1)
    assert proj.feature_whiten is None
    raw = torch.linalg.eigvalsh(torch.cov(pooled.T))
    assert raw.max() / raw.min() > 10
    assert proj.fit_input_stats(slots)
    inputs, present = proj.standardized(slots)
    assert present == list(range(200))
    white = torch.linalg.eigvalsh(torch.cov(inputs.flatten(0, 1).T))
    assert white.min() > 0.55 and white.max() < 1.0 and white.max() / white.min() < 1.8
