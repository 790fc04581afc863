"""An OpenAI-compatible API under /v1: `POST /v1/chat/completions` and `GET /v1/models`.

The official `openai` client works unchanged. A user message carries the one clip of the
conversation as a `video_url` part (a base64 `data:` URL; an http(s) URL, fetched from public
addresses only; or, when the server allows it, a file under its media folder) or an
`input_audio` part (base64 wav or mp3). Answers are standard `chat.completion` objects or
server-sent chunks, plus an `avllm` field saying what the answer was built from. Errors are
OpenAI-style objects with a 4xx status, never a 500 for what a client sent; 429 with
Retry-After when every slot and place in line is taken.

The request rules, the error statuses and how to run the server safely: docs/api.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from ..errors import AVLLMError
from ..inference import ChatReport, ChatSettings
from ..prompt import Message
from .fetch import Fetcher, FetchRefused, local_file
from .security import error_body
from .session import Busy, ChatService, Stopped, UploadTooLarge, Watch, report_dict
from .settings import ServeSettings

log = logging.getLogger("avllm.serve")

DEFAULT_MAX_TOKENS = 256  # when a request sets neither max_tokens nor max_completion_tokens
LIFT_MIN = 64 * 1024  # base64 strings this long are decoded to a file before the JSON is parsed
B64_CHUNK = 2**20  # characters of base64 decoded at a time (a multiple of 4)
SUFFIXES = {  # MIME type of a data: URL -> file suffix (PyAV probes the content; this only helps)
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/matroska": ".mkv",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "video/mpeg": ".mpg",
    "video/ogg": ".ogv",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/webm": ".webm",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
}
PART_TYPES = ("text", "video_url", "input_audio")


# ---------------------------------------------------------------------------- request schema


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class VideoURL(BaseModel):
    url: str


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: str | VideoURL


class InputAudio(BaseModel):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


Part = Annotated[TextPart | VideoPart | AudioPart, Field(discriminator="type")]
PART = TypeAdapter(Part)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # seed, user, top_p... are accepted and ignored
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    n: int = Field(default=1, ge=1, le=1)
    frames: int | None = Field(default=None, ge=1)  # avllm: frames to sample from the video


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> Response:
    return Response(error_body(status, message, code, param), status, headers, media_type="application/json")


def describe(exc: ValidationError, where: str = "") -> str:
    """Pydantic's errors as one readable line: 'messages.0.role: Input should be ...'."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "union[", "tagged-")))
        lines.append(f"{where}{'.' if where and loc else ''}{loc}: {err['msg']}" if (where or loc) else err["msg"])
    return "; ".join(lines)


# ---------------------------------------------------------------------------- messages -> clip + turns


@dataclass
class Media:
    kind: str  # "video_url" or "input_audio"
    value: str  # the URL, or the base64 audio
    audio_format: str | None = None
    where: str = ""


def split_messages(messages: list[ChatMessage]) -> tuple[Media, list[Message], str]:
    """The one clip, the history (earlier turns) and the question (the last user message)."""
    media: list[Media] = []
    turns: list[Message] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        texts: list[str] = []
        if isinstance(message.content, str):
            texts.append(message.content)
        for j, raw in enumerate(message.content if isinstance(message.content, list) else []):
            where = f"messages[{i}].content[{j}]"
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind not in PART_TYPES:
                hint = "; send the clip as video_url (images are not supported)" if kind == "image_url" else ""
                raise ApiError(
                    400,
                    f"{where}: unsupported content part type {kind!r}; this server takes {', '.join(PART_TYPES)}{hint}",
                    param=where,
                )
            try:
                part = PART.validate_python(raw)
            except ValidationError as exc:
                raise ApiError(422, describe(exc, where), param=where) from None
            if isinstance(part, TextPart):
                texts.append(part.text)
                continue
            if role != "user":
                raise ApiError(
                    400,
                    f"{where}: a {kind} part may only come in a user message, not a {message.role} message",
                    param=where,
                )
            if isinstance(part, VideoPart):
                url = part.video_url if isinstance(part.video_url, str) else part.video_url.url
                media.append(Media("video_url", url, where=where))
            else:
                media.append(Media("input_audio", part.input_audio.data, part.input_audio.format, where))
        turns.append({"role": role, "content": "\n".join(texts)})
    if not media:
        raise ApiError(
            400,
            "the conversation has no clip: this model answers questions about a video or audio clip; "
            "add a video_url part (a data: URL with base64 video) or an input_audio part "
            "(base64 wav or mp3) to a user message",
            param="messages",
        )
    if len(media) > 1:
        raise ApiError(
            400,
            f"the conversation has {len(media)} clips ({', '.join(m.where for m in media)}); "
            "this model takes exactly one video_url or input_audio part per conversation",
            param="messages",
        )
    if turns[-1]["role"] != "user":
        raise ApiError(
            400,
            f"the last message is a {turns[-1]['role']} message; end the conversation with the user's question",
            param=f"messages[{len(turns) - 1}]",
        )
    return media[0], turns[:-1], turns[-1]["content"]


# ---------------------------------------------------------------------------- the body, bounded


@dataclass
class Uploads:
    """The request's clips written to temporary files; `placeholders` maps the text that stands for
    a lifted base64 string in the parsed body to its file. Deleted when the request ends."""

    placeholders: dict[str, Path] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def new_file(self, suffix: str) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(suffix=suffix, prefix="avllm-upload-")
        self.files.append(Path(name))
        return fd, Path(name)

    def write_base64(self, data: bytes | bytearray | memoryview | str, suffix: str, limit: int, where: str) -> Path:
        """Base64 decoded into a new file a chunk at a time, refused (413) past `limit` before decoding."""
        view = memoryview(data.encode("ascii", "replace") if isinstance(data, str) else data)
        padding = bytes(view[-2:]).count(b"=") if len(view) else 0
        size = len(view) * 3 // 4 - padding
        if size > limit:
            raise UploadTooLarge(
                f"{where}: the clip is {size / 2**20:.1f} MiB, over this server's limit of {limit / 2**20:g} MiB; "
                "cut or re-encode it smaller"
            )
        fd, path = self.new_file(suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                for start in range(0, len(view), B64_CHUNK):
                    out.write(base64.b64decode(view[start : start + B64_CHUNK], validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(
                400, f"{where}: the data is not valid base64; encode the file's bytes with base64", param=where
            ) from None
        return path

    def cleanup(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)


# A long base64 string in a media field: `"url": "data:video/mp4;base64,AAAA..."` or `"data": "AAAA..."`.
# (One character class repeated: a repeated group would make the regex engine keep state per repeat.)
LIFT = re.compile(
    rb'"(url|video_url|data)"\s*:\s*"(data:([\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[\w.+-]+)*;base64,)?'
    rb'([A-Za-z0-9+/]{%d,}={0,2})"' % LIFT_MIN
)


def lift_media(body: bytearray, uploads: Uploads, limit: int) -> bytes:
    """The body with each long base64 media string decoded into a file and replaced by a placeholder,
    so a clip is never held as a JSON string, its bytes and its base64 at once."""
    view, token = memoryview(body), uuid.uuid4().hex

    def lift(match: re.Match) -> bytes:
        key, prefix, mime = match.group(1), match.group(2), match.group(3)
        if (key != b"data" and not prefix) or (match.end(4) - match.start(4)) % 4:
            return match.group(0)  # not a data: URL, or not base64: the parser says what is wrong with it
        suffix = SUFFIXES.get(mime.decode().lower(), "") if mime else ""
        placeholder = f"avllm-upload:{token}:{len(uploads.placeholders)}"
        where = f"the {key.decode()} field"
        uploads.placeholders[placeholder] = uploads.write_base64(
            view[match.start(4) : match.end(4)], suffix, limit, where
        )
        return b'"%s": "%s"' % (key, placeholder.encode())

    try:
        return LIFT.sub(lift, body)
    finally:
        view.release()


async def read_body(request: Request, limit: int) -> bytearray:
    """The body, counted as it arrives (the Guard middleware refuses it past the limit too)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over this server's limit of {limit / 2**20:.1f} MiB")
    return body


def parse_body(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply; send a plain chat request") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the request body must be a JSON object, not {type(body).__name__}")
    check_text(body)
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, describe(exc)) from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply; send a plain chat request") from None


def check_text(body: Any) -> None:
    """Refuse strings that are not valid Unicode (a lone surrogate from a \\ud800 escape): no
    tokenizer or JSON encoder takes them."""
    todo = [body]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    400, "the request holds text that is not valid Unicode (a lone surrogate); send UTF-8 text"
                ) from None


# ---------------------------------------------------------------------------- media part -> file


class ClipLoader:
    """A request's media part as a file: its own bytes, a fetched URL, or a file in the allowed folder."""

    def __init__(self, service: ChatService, settings: ServeSettings):
        self.service = service
        self.settings = settings
        self.fetcher = Fetcher(settings)
        self.limit = int(service.settings.max_upload_mb * 2**20)

    async def file(self, media: Media, uploads: Uploads, watch: Watch) -> tuple[Path, str]:
        """The clip's file and what to call it in messages."""
        where = media.where
        if media.value in uploads.placeholders:
            return uploads.placeholders[media.value], f"the {media.kind} at {where}"
        if media.kind == "input_audio":
            path = await anyio.to_thread.run_sync(
                uploads.write_base64, media.value, "." + (media.audio_format or "wav"), self.limit, where
            )
            return path, f"the input_audio at {where}"
        url = media.value.strip()
        if url.startswith("data:"):
            head, sep, payload = url.partition(",")
            if not sep or not head.endswith(";base64"):
                raise ApiError(
                    400, f"{where}: a data: URL must be base64, like data:video/mp4;base64,AAAA...", param=where
                )
            suffix = SUFFIXES.get(head[5:].split(";")[0].lower(), "")
            path = await anyio.to_thread.run_sync(uploads.write_base64, payload, suffix, self.limit, where)
            return path, f"the video_url at {where}"
        shown = url if len(url) <= 200 else url[:200] + "..."
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as exc:
            raise ApiError(400, f"{where}: the URL is malformed ({exc})", param=where) from None
        if scheme in ("http", "https"):
            try:
                path = await self.fetcher.fetch(url, watch.deadline)
            except FetchRefused as exc:
                raise ApiError(400, f"{where}: could not fetch {shown}: {exc}", param=where) from None
            except UploadTooLarge as exc:
                raise UploadTooLarge(f"{where}: {shown}: {exc}") from None
            uploads.files.append(path)
            return path, shown
        if scheme == "file" or (not scheme and url):
            try:
                return await anyio.to_thread.run_sync(local_file, url, self.settings), shown
            except FetchRefused as exc:
                raise ApiError(400, f"{where}: {exc}", param=where) from None
        raise ApiError(
            400,
            f"{where}: unsupported URL scheme {scheme[:20]!r}; send a data: URL (base64) or an http(s) URL",
            param=where,
        )


# ---------------------------------------------------------------------------- blocking work in a thread


class Job:
    """A request's blocking work (encode, answer) in its own thread, reporting to the event loop.

    Events: ("ready",) once a generation slot is held, ("piece", text), ("done",), ("error", exc).
    """

    def __init__(self, work: Callable[[Callable[..., None]], None]):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple] = asyncio.Queue()
        threading.Thread(target=self._run, args=(work,), daemon=True, name="avllm-answer").start()

    def _run(self, work: Callable[[Callable[..., None]], None]) -> None:
        try:
            work(self._emit)
            self._emit("done")
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which answers with it
            self._emit("error", exc)

    def _emit(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: the server is gone
            pass

    async def next(self) -> tuple:
        event = await self.events.get()
        if event[0] == "error":
            raise event[1]
        return event


async def until_disconnected(request: Request, watch: Watch, scope: anyio.CancelScope) -> None:
    """Set the watch and cancel the handler when the client goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            watch.cancel.set()
            scope.cancel()
            return


# ---------------------------------------------------------------------------- the router


def build_router(service: ChatService, settings: ServeSettings) -> APIRouter:
    """The /v1 routes; `settings` are the server's (where clips may come from), the limits the service's."""
    router = APIRouter(prefix="/v1", tags=["openai"])
    loader = ClipLoader(service, settings)
    limits = service.settings
    created = int(time.time())
    served = {service.model_id, service.model.config.name}
    metrics = service.metrics

    def model_card() -> dict:
        return {"id": service.model_id, "object": "model", "created": created, "owned_by": "avllm"}

    @router.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id not in served:
            return error_response(
                404,
                f"model {model_id[:100]!r} is not served here; this server serves {service.model_id!r}",
                param="model",
                code="model_not_found",
            )
        return model_card()

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        watch = Watch.after(limits.request_timeout)
        uploads = Uploads()
        response = None
        try:
            try:  # read before watching for the client leaving: both read the same ASGI messages
                raw = [await read_body(request, limits.max_body_bytes)]
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.param, exc.code)
            except ClientDisconnect:
                return Response(status_code=499)
            async with anyio.create_task_group() as group:  # no exception may leave it (it would come as a group)
                group.start_soon(until_disconnected, request, watch, group.cancel_scope)
                response = await answer_or_error(raw, watch, uploads)
                group.cancel_scope.cancel()
        finally:
            if not isinstance(response, StreamingResponse):  # a stream deletes its files when it ends
                uploads.cleanup()
        return response or Response(status_code=499)  # the client went away: nobody reads this

    async def answer_or_error(raw: list[bytearray], watch: Watch, uploads: Uploads) -> Response:
        try:
            return await answer(raw, watch, uploads)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.param, exc.code)
        except UploadTooLarge as exc:
            return error_response(413, str(exc), code="clip_too_large")
        except Busy as exc:
            return error_response(429, str(exc), code="server_busy", headers={"Retry-After": str(exc.retry_after)})
        except Stopped as exc:
            return error_response(408, str(exc), code="timeout")
        except AVLLMError as exc:  # MediaError, PromptTooLong and the like: the client's input
            return error_response(400, str(exc))

    async def answer(raw: list[bytearray], watch: Watch, uploads: Uploads) -> Response:
        """`raw` holds the body, popped in the worker thread so that it is freed once its clips are lifted."""
        started = time.perf_counter()
        service.slots.check_room()
        req = await anyio.to_thread.run_sync(lambda: parse_body(lift_media(raw.pop(), uploads, loader.limit)))
        if req.model and req.model not in served:
            raise ApiError(
                404,
                f"model {req.model[:100]!r} is not served here; this server serves {service.model_id!r} "
                "(GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        media, history, question = split_messages(req.messages)
        chat = ChatSettings(
            max_new_tokens=req.max_completion_tokens
            or req.max_tokens
            or min(DEFAULT_MAX_TOKENS, limits.max_new_tokens),
            temperature=req.temperature if req.temperature is not None else 0.0,
        )
        service.check_settings(chat)
        path, name = await loader.file(media, uploads, watch)
        report, used = ChatReport(), {}  # used: the clip and whether it was reused, set by the job

        def work(emit: Callable[..., None]) -> None:
            clip, reused = service.clip_from_path(path, req.frames, name, watch)
            used.update(clip=clip, reused=reused)
            first = True
            for piece in service.stream(clip, question, history, chat, report, reused, watch, lambda: emit("ready")):
                if piece:  # the detokenizer holds back partial words as empty pieces
                    if first:
                        metrics.first_token.observe(time.perf_counter() - started)
                        first = False
                    emit("piece", piece)
            metrics.latency.observe(time.perf_counter() - started)

        job = Job(work)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": service.model_id}
        try:
            event = await job.next()
            if req.stream:  # the slot is held (or the answer done): the status is 200 from here on
                return StreamingResponse(
                    events(job, event, meta, report, used, chat, watch, uploads),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            while event[0] != "done":
                event = await job.next()
        except BaseException:
            watch.cancel.set()  # the job stops at its next word, or leaves the line
            raise
        completion = report.tokens.get("generated", 0)
        return Response(
            json.dumps(
                {
                    **meta,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": report.answer},
                            "finish_reason": finish_reason(completion, chat),
                            "logprobs": None,
                        }
                    ],
                    "usage": usage(report.tokens.get("prompt", 0), completion),
                    "avllm": report_dict(report, used["clip"], used["reused"]),
                }
            ),
            media_type="application/json",
        )

    async def events(
        job: Job,
        event: tuple,
        meta: dict,
        report: ChatReport,
        used: dict,
        chat: ChatSettings,
        watch: Watch,
        uploads: Uploads,
    ) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
            body = {
                **meta,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while event[0] != "done":
                if event[0] == "piece":
                    yield chunk({"content": event[1]})
                event = await job.next()
            completion = report.tokens.get("generated", 0)
            yield chunk(
                {},
                finish_reason(completion, chat),
                usage=usage(report.tokens.get("prompt", 0), completion),
                avllm=report_dict(report, used["clip"], used["reused"]),
            )
        except Exception as exc:  # after the headers went out, an error can only be an event
            if not isinstance(exc, AVLLMError):
                log.error("generation failed", exc_info=exc)
            message = (
                str(exc)
                if isinstance(exc, AVLLMError)
                else f"generation failed on the server ({type(exc).__name__}); see the server log"
            )
            error = {"message": message, "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        finally:
            watch.cancel.set()  # a client that went away: the job stops at its next word and frees the slot
            uploads.cleanup()
        yield "data: [DONE]\n\n"

    return router


def finish_reason(completion_tokens: int, settings: ChatSettings) -> str:
    return "length" if completion_tokens >= settings.max_new_tokens else "stop"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
