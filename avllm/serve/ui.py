"""The Gradio chat UI: upload a clip, ask about it, watch the answer stream in.

Beside the chat it shows what the model used: the sampled frames with their times, whether
the clip had audio and how many seconds of it were used, the speech heard (subtitles), what
was truncated, warnings and timings. The clip is encoded when it is uploaded (the frame strip appears then) and the
features are reused for every question about it (ChatService's store, keyed by the file's
content hash). Errors appear in the chat as a plain sentence; tracebacks go to the server log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import AVLLMError
from ..inference import ChatReport, ChatSettings, model_warnings
from .session import ChatService, StoredClip

log = logging.getLogger("avllm.serve")

EXAMPLES = [  # (file in the examples folder, `avllm serve --examples DIR`, question)
    ("videollama-dog_barking.mp4", "What animal is in the video, and what sound can be heard?"),
    ("gradio-muted_video_sample.mp4", "Describe what happens. Is there any sound?"),
    ("whisper-jfk.flac", "What does the speaker say?"),
    ("videollama-boat.mp4", "Where is this, and what is moving?"),
]
NO_CLIP = "Upload a video or audio file (or click an example below it), then ask about it."
NO_FACTS = "No clip yet. Its sampled frames, its sound and what was cut will show here."
CSS = """
#facts { font-size: 0.9em; }
#frames .caption-label { font-size: 0.8em; }
"""


def example_rows(folder: str | Path | None) -> list[list[str]]:
    if not folder or not Path(folder).is_dir():
        return []
    return [[str(Path(folder) / name), question] for name, question in EXAMPLES if (Path(folder) / name).is_file()]


def frame_strip(clip: StoredClip) -> list[tuple[Any, str]]:
    return [(thumb, f"t={t:.1f}s") for thumb, t in zip(clip.thumbs, clip.enc.frame_times)]


def clip_facts(clip: StoredClip) -> list[str]:
    """What the model takes from the clip, in plain words (markdown lines)."""
    enc, facts = clip.enc, clip.enc.facts
    frames = 0 if enc.visual is None else len(enc.frame_times)
    lines = [f"**{clip.name}**: {enc.duration:.1f} s"]
    if frames:
        times = ", ".join(f"{t:.1f}" for t in enc.frame_times)
        lines.append(f"- **Frames:** {frames}, at {times} s")
    else:
        lines.append("- **Frames:** none (no video track: the answer uses the sound only)")
    if enc.audio is None:
        lines.append("- **Audio:** no audio track (the answer uses the picture only)")
    else:
        silent = " (silent: every sample is 0)" if facts and facts.audio_silent else ""
        lines.append(f"- **Audio:** present, {facts.audio_seconds if facts else 0:.1f} s used{silent}")
    for segment in enc.subtitles:
        lines.append(f'- **Heard at {segment.start:.1f}-{segment.end:.1f} s:** "{segment.text}"')
    truncated = enc.truncated
    lines.append("- **Truncated:** " + ("; ".join(truncated) if truncated else "nothing"))
    return lines


def warnings_lines(warnings: list[str]) -> list[str]:
    return [f"- **Warning:** {w}" for w in dict.fromkeys(warnings)]


def answer_facts(clip: StoredClip, report: ChatReport, reused: bool) -> str:
    t = report.timings
    encode = sum(t.get(k, 0) for k in ("decode", "encode_audio", "encode_visual", "transcribe"))
    parts = [
        ("features reused from the upload" if reused else f"decode + encode {encode:.2f} s"),
        f"waiting for a slot {t.get('queue', 0):.2f} s",
        f"first token {t.get('first_token', 0):.2f} s",
        f"answer {t.get('generate', 0):.2f} s",
    ]
    return "\n".join(clip_facts(clip) + warnings_lines(report.warnings) + ["- **Timings:** " + " · ".join(parts)])


def upload_facts(service: ChatService, clip: StoredClip, reused: bool) -> str:
    t = clip.enc.timings
    how = (
        "features reused (this file was encoded before)"
        if reused
        else f"decoded in {t.get('decode', 0):.2f} s, "
        f"encoded in {t.get('encode_audio', 0) + t.get('encode_visual', 0):.2f} s"
    )
    warnings = model_warnings(service.model) + (list(clip.enc.facts.warnings) if clip.enc.facts else [])
    return "\n".join(clip_facts(clip) + warnings_lines(warnings) + [f"- **Clip:** {how}; ask away"])


def plain_error(exc: BaseException) -> str:
    if isinstance(exc, AVLLMError):
        return f"Sorry, I can't use that: {exc}"
    log.error("unexpected error in the UI", exc_info=exc)
    return (
        f"Sorry, something went wrong on the server while answering ({type(exc).__name__}). "
        "The details are in the server log; try again or try another clip."
    )


def build_ui(service: ChatService, examples_dir: str | Path | None = None) -> gr.Blocks:
    model = service.model
    media = model.config.media
    limits = service.settings
    caveats = "".join(f"\n\n> **Note:** {w}" for w in model_warnings(model))

    def load_clip(path: str | None, frames: float):
        """A new clip: encode it (or reuse it), show its frames and facts, start a fresh chat."""
        if not path:
            return [], [], NO_FACTS, []
        try:
            clip, reused = service.clip_from_path(path, int(frames), name=Path(path).name)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a chat message
            return [{"role": "assistant", "content": plain_error(exc)}], [], "", []
        return [], frame_strip(clip), upload_facts(service, clip, reused), []

    def respond(
        message: str,
        chat: list[dict] | None,
        path: str | None,
        frames: float,
        max_tokens: float,
        temperature: float,
        turns: list[dict] | None,
    ):
        """Stream the answer into the chat; `turns` (per browser session) holds the clip's conversation."""
        chat = [{"role": m["role"], "content": m["content"]} for m in (chat or [])]
        turns = list(turns or [])
        message = (message or "").strip()
        if not message:
            yield chat, "", gr.skip(), gr.skip(), turns
            return
        chat.append({"role": "user", "content": message})
        if not path:
            chat.append({"role": "assistant", "content": NO_CLIP})
            yield chat, "", gr.skip(), gr.skip(), turns
            return
        chat.append({"role": "assistant", "content": ""})
        yield chat, "", gr.skip(), gr.skip(), turns
        try:
            clip, reused = service.clip_from_path(path, int(frames), name=Path(path).name)
            settings = ChatSettings(max_new_tokens=int(max_tokens), temperature=float(temperature))
            report = ChatReport()
            for piece in service.stream(clip, message, turns, settings, report, reused):
                if not piece:
                    continue
                chat[-1]["content"] += piece
                yield chat, "", gr.skip(), gr.skip(), turns
        except Exception as exc:  # noqa: BLE001 - every failure becomes a chat message
            chat[-1]["content"] = plain_error(exc)
            yield chat, "", gr.skip(), gr.skip(), turns
            return
        chat[-1]["content"] = report.answer or "(the model gave an empty answer)"
        turns += [{"role": "user", "content": message}, {"role": "assistant", "content": report.answer}]
        yield chat, "", frame_strip(clip), answer_facts(clip, report, reused), turns

    with gr.Blocks(title="avllm: chat about a video") as demo:
        gr.Markdown(
            f"## avllm: chat about a video\nModel **{service.model_id}**. Upload a video or an audio file "
            f"(up to {limits.max_upload_mb:g} MiB and {limits.max_duration:g} s), then ask questions; answers "
            f"stream in. The API for programs is at `/v1` (OpenAI-compatible).{caveats}"
        )
        turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                clip_in = gr.File(label="Video or audio file", elem_id="clip", height=150)
                rows = example_rows(examples_dir)
                frames_out = gr.Gallery(
                    label="Frames the model sees",
                    elem_id="frames",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    allow_preview=True,
                    show_label=True,
                )
                facts_out = gr.Markdown(NO_FACTS, elem_id="facts")
                with gr.Accordion("Settings", open=False):
                    frames = gr.Slider(
                        1,
                        max(limits.max_frames // 2, media.num_frames),
                        value=media.num_frames,
                        step=1,
                        label="Frames",
                        info="sampled uniformly over the clip",
                    )
                    max_tokens = gr.Slider(
                        8,
                        min(1024, limits.max_new_tokens),
                        value=min(128, limits.max_new_tokens),
                        step=8,
                        label="Max tokens",
                    )
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature", info="0 = greedy")
            with gr.Column(scale=3, min_width=400):
                chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=480, placeholder=NO_CLIP)
                question = gr.Textbox(
                    label="Question",
                    placeholder="Ask about the clip and press Enter",
                    show_label=False,
                    elem_id="question",
                    submit_btn="Ask",
                )
                clear = gr.Button("Clear chat", elem_id="clear", variant="secondary", size="sm")
        if rows:
            gr.Examples(
                rows,
                inputs=[clip_in, question],
                label="Example clips (click one, then press Enter in the question box)",
            )

        clip_in.change(load_clip, [clip_in, frames], [chatbot, frames_out, facts_out, turns], api_name="load_clip")
        question.submit(
            respond,
            [question, chatbot, clip_in, frames, max_tokens, temperature, turns],
            [chatbot, question, frames_out, facts_out, turns],
            api_name="ask",
        )
        clear.click(lambda: ([], []), None, [chatbot, turns], api_name="clear", queue=False)

    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_queue + limits.concurrency)
    return demo
