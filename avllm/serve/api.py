"""An OpenAI-compatible API under /v1: `POST /v1/chat/completions` and `GET /v1/models`.

The official `openai` client works unchanged. A request carries its clip as a content part
of a user message:

* `{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}` (the value may
  also be the URL string itself). An `http(s)://` URL is fetched (400 when it cannot be);
  a local path (`/abs/file.mp4` or `file://...`) only when the server runs with
  `--allow-local-files`.
* `{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav" | "mp3"}}`.

The rule for conversations: exactly one clip (video_url or input_audio) per conversation, in
any one user message (clients resend it with each request, as with images). The model sees
it at the start of the first user turn; earlier user/assistant messages become the history
and the last message, a user message, is the question. A request without a clip is refused
with 400: this model answers questions about a clip.

Answers are standard `chat.completion` objects (or `chat.completion.chunk` server-sent
events ending with `data: [DONE]`), plus a top-level `avllm` field with what the answer was
built from: frames and their times, whether audio was used and for how many seconds, the
clip's duration, what was truncated, warnings and timings. When streaming it rides on the
last chunk. Extra request fields: `frames` (how many frames to sample; `extra_body` in the
openai client).

Errors are OpenAI-style `{"error": {"message", "type", "param", "code"}}`: 400 for bad
input (a bad file, a missing clip, an unfetchable URL), 413 for a clip over the size limit,
422 for a request that does not fit the schema, 404 for an unknown model. Never a 500 for
something the client sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.concurrency import iterate_in_threadpool

from ..errors import AVLLMError
from ..inference import ChatReport, ChatSettings
from ..prompt import Message
from .session import ChatService, StoredClip, UploadTooLarge, report_dict

log = logging.getLogger("avllm.serve")

FETCH_TIMEOUT = 15.0  # seconds for an http(s) video_url
DEFAULT_MAX_TOKENS = 256  # when a request sets neither max_tokens nor max_completion_tokens
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


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error"}
    body = {
        "error": {"message": message, "type": kind.get(status, "invalid_request_error"), "param": param, "code": code}
    }
    return JSONResponse(body, status_code=status)


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


def decode_base64(data: str, service: ChatService, where: str) -> bytes:
    """Base64 to bytes, refusing (413) what would decode to more than the upload limit before decoding."""
    service.check_size(len(data) * 3 // 4 - 2, where)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"{where}: the data is not valid base64; encode the file's bytes with base64", param=where
        ) from None


class ClipLoader:
    """Turns a request's media part into an encoded clip (runs in a worker thread: it blocks)."""

    def __init__(self, service: ChatService, allow_local_files: bool, allow_remote_urls: bool):
        self.service = service
        self.allow_local_files = allow_local_files
        self.allow_remote_urls = allow_remote_urls

    def __call__(self, media: Media, frames: int | None) -> tuple[StoredClip, bool]:
        if media.kind == "input_audio":
            data = decode_base64(media.value, self.service, media.where)
            return self.service.clip_from_bytes(
                data, "." + (media.audio_format or "wav"), frames, f"the input_audio at {media.where}"
            )
        url = media.value.strip()
        if url.startswith("data:"):
            head, sep, payload = url.partition(",")
            if not sep or not head.endswith(";base64"):
                raise ApiError(
                    400,
                    f"{media.where}: a data: URL must be base64, like data:video/mp4;base64,AAAA...",
                    param=media.where,
                )
            mime = head[5:].split(";")[0].lower()
            data = decode_base64(payload, self.service, media.where)
            return self.service.clip_from_bytes(data, SUFFIXES.get(mime, ""), frames, f"the video_url at {media.where}")
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            return self.fetch(url, media.where, frames)
        if scheme == "file" or (scheme == "" and url):
            path = unquote(urlparse(url).path) if scheme == "file" else url
            if not self.allow_local_files:
                raise ApiError(
                    400,
                    f"{media.where}: local file paths are turned off on this server; send the clip as a "
                    "data: URL (base64), or start the server with --allow-local-files",
                    param=media.where,
                )
            if not Path(path).is_absolute():
                raise ApiError(400, f"{media.where}: {path}: give an absolute path on the server", param=media.where)
            return self.service.clip_from_path(path, frames, name=path)
        raise ApiError(
            400,
            f"{media.where}: unsupported URL scheme {scheme!r}; send a data: URL (base64) or an http(s) URL",
            param=media.where,
        )

    def fetch(self, url: str, where: str, frames: int | None) -> tuple[StoredClip, bool]:
        import httpx

        if not self.allow_remote_urls:
            raise ApiError(
                400,
                f"{where}: fetching URLs is turned off on this server; send the clip as a data: URL (base64)",
                param=where,
            )
        limit = self.service.limits.max_upload_mb * 2**20
        chunks, size = [], 0
        try:
            with httpx.stream("GET", url, timeout=FETCH_TIMEOUT, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise ApiError(
                        400,
                        f"{where}: could not fetch {url}: the server answered HTTP {response.status_code}; "
                        "check the URL or send the clip as a data: URL (base64)",
                        param=where,
                    )
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLarge(
                            f"{url}: the clip is over this server's limit of "
                            f"{self.service.limits.max_upload_mb:g} MiB; cut or re-encode it smaller"
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise ApiError(
                400,
                f"{where}: could not fetch {url} ({type(exc).__name__}: {exc or 'no details'}); check the URL "
                "or send the clip as a data: URL (base64)",
                param=where,
            ) from None
        return self.service.clip_from_bytes(b"".join(chunks), Path(urlparse(url).path).suffix.lower(), frames, url)


# ---------------------------------------------------------------------------- the router


def build_router(service: ChatService, allow_local_files: bool = False, allow_remote_urls: bool = True) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    loader = ClipLoader(service, allow_local_files, allow_remote_urls)
    created = int(time.time())
    served = {service.model_id, service.model.config.name}

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
                f"model {model_id!r} is not served here; this server serves {service.model_id!r}",
                param="model",
                code="model_not_found",
            )
        return model_card()

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            return await answer(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.param, exc.code)
        except UploadTooLarge as exc:
            return error_response(413, str(exc), code="clip_too_large")
        except AVLLMError as exc:  # MediaError and the like: the client's input
            return error_response(400, str(exc))

    async def answer(request: Request):
        req = await parse_request(request, service)
        if req.model and req.model not in served:
            raise ApiError(
                404,
                f"model {req.model!r} is not served here; this server serves {service.model_id!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        media, history, question = split_messages(req.messages)
        settings = ChatSettings(
            max_new_tokens=req.max_completion_tokens
            or req.max_tokens
            or min(DEFAULT_MAX_TOKENS, service.limits.max_new_tokens),
            temperature=req.temperature if req.temperature is not None else 0.0,
        )
        service.check_settings(settings)
        clip, reused = await anyio.to_thread.run_sync(loader, media, req.frames)
        prompt_tokens = service.prompt_tokens(clip, history, question)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": service.model_id}
        report = ChatReport()
        pieces = service.stream(clip, question, history, settings, report, reused)
        if req.stream:
            return StreamingResponse(
                events(pieces, meta, report, reused, prompt_tokens, settings),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            await anyio.to_thread.run_sync(lambda: [None for _ in pieces])
        finally:
            pieces.close()
        completion = report.tokens.get("generated", 0)
        return {
            **meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": report.answer},
                    "finish_reason": finish_reason(completion, settings),
                    "logprobs": None,
                }
            ],
            "usage": usage(prompt_tokens, completion),
            "avllm": report_dict(report, reused),
        }

    async def events(
        pieces: Iterator[str], meta: dict, report: ChatReport, reused: bool, prompt_tokens: int, settings: ChatSettings
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
            async for piece in iterate_in_threadpool(pieces):
                if not piece:  # the detokenizer holds back partial words as empty pieces
                    continue
                yield chunk({"content": piece})
            completion = report.tokens.get("generated", 0)
            yield chunk(
                {},
                finish_reason(completion, settings),
                usage=usage(prompt_tokens, completion),
                avllm=report_dict(report, reused),
            )
        except Exception as exc:  # after the headers went out, an error can only be an event
            log.exception("generation failed")
            message = (
                str(exc)
                if isinstance(exc, AVLLMError)
                else f"generation failed on the server ({type(exc).__name__}); see the server log"
            )
            error = {"message": message, "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        finally:
            with anyio.CancelScope(shield=True):  # a client that went away: stop generating, free the slot
                await anyio.to_thread.run_sync(pieces.close)
        yield "data: [DONE]\n\n"

    return router


def finish_reason(completion_tokens: int, settings: ChatSettings) -> str:
    return "length" if completion_tokens >= settings.max_new_tokens else "stop"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def parse_request(request: Request, service: ChatService) -> ChatRequest:
    """The JSON body as a ChatRequest: 413 when far over the upload limit, 400 for bad JSON, 422 for the schema."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > service.limits.max_upload_mb * 2**20 * 4 / 3 + 2**20:
        raise ApiError(
            413,
            f"the request is {int(length) / 2**20:.1f} MiB, over this server's clip limit of "
            f"{service.limits.max_upload_mb:g} MiB (base64 makes a clip a third larger)",
            code="clip_too_large",
        )
    raw = await request.body()
    return await anyio.to_thread.run_sync(parse_body, raw)  # a clip's base64 can be megabytes of JSON


def parse_body(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the request body must be a JSON object, not {type(body).__name__}")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, describe(exc)) from None
