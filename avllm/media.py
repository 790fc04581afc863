"""Decode any audio or video file with PyAV into sampled frames, a 16 kHz soundtrack and facts.

Everything downstream (encoders, the model, the UI) sees one `Clip`, whatever the container
was, and every compromise made on the way (frames capped, audio cut, a missing or silent
track, a file that ends early) is written into `Clip.facts` so it can be shown to the user
rather than hidden. Files a user cannot use raise `MediaError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from tqdm.auto import tqdm

from .config import MediaConfig
from .errors import MediaError

SAMPLE_RATE = 16000  # Whisper's rate
EPS = 1e-6  # seconds: a frame this close to a sampled time counts as at it (float rounding)
SEEK_AHEAD = 1.0  # seconds: a target closer than this past the decoder's position is reached by decoding on
# seconds a container may read longer than its streams (matroska and MPEG-TS add the audio's last packet:
# a 3600 s recording reads as 3600.02 s) without counting as over a limit
ROUNDING = 0.5
FORMATS = "a video or audio file (mp4, mkv, webm, avi, mov, wav, flac, mp3)"
REENCODE = "re-download it or re-encode it (e.g. to mp4 with h264 video and aac audio)"


@dataclass
class MediaFacts:
    """What the file is and what was taken from it, shown by `avllm info` and with answers."""

    path: str
    container: str  # PyAV format name (first of its aliases: "mov", "matroska", "wav")
    duration: float  # seconds, whole file (container or longest stream); decodable part if truncated
    has_video: bool
    has_audio: bool  # an audio track exists
    audio_silent: bool  # a track exists but every decoded sample used is 0
    video_codec: str | None
    audio_codec: str | None
    width: int | None  # source resolution (coded size)
    height: int | None
    fps: float | None
    audio_channels: int | None
    audio_sample_rate: int | None
    frames: int = 0  # frames actually taken
    audio_seconds: float = 0.0  # seconds of audio actually used (after truncation)
    audio_cut: bool = False  # the sound was cut at max_audio_seconds: it goes on past audio_seconds
    truncated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Clip:
    """Frames sampled from the picture plus the whole (possibly cut) soundtrack."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB; shape (0, 0, 0, 3) for audio-only files
    frame_times: np.ndarray  # [T] float64 seconds from the start: the moment each frame shows
    audio: np.ndarray | None  # [S] float32 mono at SAMPLE_RATE in [-1, 1]; None without a track
    facts: MediaFacts

    @property
    def duration(self) -> float:
        return self.facts.duration


def sample_times(duration: float, cfg: MediaConfig) -> tuple[np.ndarray, list[str]]:
    """Times (seconds) at which to take frames, and notes on any cap applied.

    Uniform mode takes num_frames at segment centres so no frame sits on the very first or
    last instant (often black), or for a clip longer than long_clip one per frame_every seconds
    if that is more; fps mode spaces frames 1/fps apart, centred in the clip. Either way at most
    max_frames are taken, then spread uniformly over the whole clip so the end of a long video
    is not silently dropped.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    notes: list[str] = []
    cap = max(1, cfg.max_frames)
    if cfg.fps:
        step = 1.0 / cfg.fps
        wanted = max(1, math.floor(duration * cfg.fps + 1e-6))
        if wanted <= cap:
            first = (duration - (wanted - 1) * step) / 2
            return first + step * np.arange(wanted, dtype=np.float64), notes
        notes.append(f"frames capped at {cap} (fps {float(cfg.fps)} asks for {wanted})")
        n = cap
    else:
        n, asks = max(1, cfg.num_frames), "num_frames"
        if cfg.frame_every and duration > cfg.long_clip and duration / cfg.frame_every > n:
            n, asks = math.ceil(duration / cfg.frame_every), f"one per {cfg.frame_every:g} s"
        if n > cap:
            notes.append(f"frames capped at {cap} ({asks} asks for {n})")
            n = cap
    return (np.arange(n, dtype=np.float64) + 0.5) * duration / n, notes


def probe(path: str | os.PathLike, cfg: MediaConfig | None = None) -> MediaFacts:
    """Facts from the headers only (fast); raises MediaError for files load_clip would refuse."""
    cfg = cfg or MediaConfig()
    with _open(path, cfg) as container:
        try:
            return _facts(str(path), container, cfg)
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: its headers cannot be read ({exc}); {REENCODE}") from exc


def load_clip(path: str | os.PathLike, cfg: MediaConfig | None = None, progress: bool = False) -> Clip:
    """Decode sampled frames (scaled to max_side) and the mono 16 kHz soundtrack of a file."""
    cfg = cfg or MediaConfig()
    facts = probe(path, cfg)
    try:
        with _open(path, cfg) as container:
            start = container.start_time / 1e6 if container.start_time is not None else 0.0
            audio, audio_end = None, None
            if facts.has_audio:
                audio, audio_end = _read_audio(container, _audio_stream(container), start, facts, cfg)
                if not facts.has_video:
                    _cut_short(facts, audio_end)
            frames = np.zeros((0, 0, 0, 3), np.uint8)
            times = np.zeros(0, np.float64)
            if facts.has_video:
                frames, times = _read_video(container, _video_stream(container), start, facts, cfg, audio_end, progress)
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: decoding failed ({exc}); the file is damaged or unsupported: {REENCODE}") from exc
    facts.frames = len(frames)
    if audio is not None:
        _audio_facts(audio, facts, cfg)
    if not facts.has_video:
        facts.warnings.append("no video track: answers use the sound only")
    if not facts.has_audio:
        facts.warnings.append("no audio track: answers use the picture only")
    return Clip(frames=frames, frame_times=times, audio=audio, facts=facts)


# ----------------------------------------------------------------------------- opening and facts


def _open(path: str | os.PathLike, cfg: MediaConfig) -> av.container.InputContainer:
    """Open a file for reading after the checks that need no decoding."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{path}: no such file; check the path (relative paths start from {os.getcwd()})")
    if p.is_dir():
        raise MediaError(f"{path}: is a directory, not a media file; pass one video or audio file from it")
    if not p.is_file():  # reading a FIFO or a device (/dev/zero) would block or never end
        raise MediaError(f"{path}: is not a regular file (a pipe or a device); pass a video or audio file")
    size_mb = p.stat().st_size / 2**20
    if size_mb == 0:
        raise MediaError(f"{path}: the file is empty (0 bytes); {REENCODE}")
    if size_mb > cfg.max_file_mb:
        raise MediaError(
            f"{path}: the file is {size_mb:.1f} MiB, over the limit of {cfg.max_file_mb:g} MiB; "
            "cut or re-encode it smaller, or raise media.max_file_mb"
        )
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except PermissionError as exc:
        raise MediaError(f"{path}: permission denied; make the file readable (chmod +r)") from exc
    except (av.FFmpegError, OSError) as exc:
        if _looks_like_text(p):
            raise MediaError(f"{path}: looks like a text file, not audio or video; pass {FORMATS}") from exc
        raise MediaError(
            f"{path}: cannot be read as audio or video (PyAV: {exc}); it is corrupt, truncated or not a "
            f"media file: {REENCODE}"
        ) from exc
    if container.format.name == "tty" or (not _has_media(container) and _looks_like_text(p)):
        container.close()  # ffmpeg's "tty" demuxer turns any .txt into an ANSI-art video
        raise MediaError(f"{path}: looks like a text file, not audio or video; pass {FORMATS}")
    return container


def _looks_like_text(p: Path) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(4096)
    printable = sum(b in (9, 10, 13) or 32 <= b for b in head)
    return bool(head) and b"\0" not in head and printable >= 0.95 * len(head)


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The main video stream; cover art in audio files (attached pictures) does not count."""
    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:
            return s
    return None


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def _has_media(container: av.container.InputContainer) -> bool:
    return _video_stream(container) is not None or _audio_stream(container) is not None


def _codec_name(stream: av.stream.Stream) -> str | None:
    codec = stream.codec_context.codec
    return codec.canonical_name if codec is not None else None  # "mp3", not the decoder "mp3float"


def _facts(path: str, container: av.container.InputContainer, cfg: MediaConfig) -> MediaFacts:
    vs, aus = _video_stream(container), _audio_stream(container)
    if vs is None and aus is None:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise MediaError(
            f"{path}: has neither a video nor an audio stream (streams: {', '.join(kinds)}); pass {FORMATS}"
        )
    for stream in (vs, aus):
        if stream is not None and stream.codec_context is None:  # e.g. an SVG image: no decoder here
            raise MediaError(f"{path}: its {stream.type} stream cannot be decoded here; pass {FORMATS}")
    duration = _duration(container, [s for s in (vs, aus) if s is not None])
    if not duration or duration <= 0:
        raise MediaError(f"{path}: has zero duration: no audio or video data could be read from it; {REENCODE}")
    if duration > cfg.max_duration + ROUNDING:
        raise MediaError(
            f"{path}: lasts {duration:.1f} s, over the limit of {cfg.max_duration:g} s; "
            "cut out the part you need, or raise media.max_duration"
        )
    rate = (vs.average_rate or vs.guessed_rate) if vs is not None else None
    return MediaFacts(
        path=path,
        container=container.format.name.split(",")[0],
        duration=round(duration, 6),
        has_video=vs is not None,
        has_audio=aus is not None,
        audio_silent=False,
        video_codec=_codec_name(vs) if vs is not None else None,
        audio_codec=_codec_name(aus) if aus is not None else None,
        width=(vs.codec_context.width or None) if vs is not None else None,
        height=(vs.codec_context.height or None) if vs is not None else None,
        fps=float(rate) if rate else None,
        audio_channels=aus.codec_context.layout.nb_channels if aus is not None else None,
        audio_sample_rate=aus.codec_context.sample_rate if aus is not None else None,
    )


def _duration(container: av.container.InputContainer, streams: list[av.stream.Stream]) -> float | None:
    """Container duration, else the longest stream's, else the last packet found by demuxing."""
    if container.duration and container.duration > 0:
        return container.duration / 1e6
    lengths = [float(s.duration * s.time_base) for s in streams if s.duration and s.time_base]
    if lengths:
        return max(lengths)
    return _scan_end(container, streams)


def _scan_end(container: av.container.InputContainer, streams: list[av.stream.Stream]) -> float | None:
    """Where the readable packets end (seconds from the start), reading without decoding."""
    start = container.start_time / 1e6 if container.start_time is not None else 0.0
    end = None
    try:
        for packet in container.demux(*streams):
            if packet.pts is not None and packet.time_base is not None:
                t = float((packet.pts + (packet.duration or 0)) * packet.time_base) - start
                end = t if end is None else max(end, t)
    except av.FFmpegError:
        pass  # a damaged tail: what was read so far is what there is
    return end


def _decode(container: av.container.InputContainer, stream: av.stream.Stream, damaged: list[int]) -> Iterator:
    """Frames of one stream; damaged packets are skipped (and counted), a broken tail ends it."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError:
            damaged[0] += 1
            return
        try:
            yield from packet.decode()
        except av.FFmpegError:
            damaged[0] += 1


def _cut_short(facts: MediaFacts, usable: float | None) -> bool:
    """When the decodable part ends well before the header's duration, say so and use it."""
    if not usable or usable >= facts.duration - _slack(facts.duration):
        return False
    facts.warnings.append(
        f"file is truncated or damaged: only the first {usable:.1f} s of the {facts.duration:.1f} s "
        "in its header could be decoded"
    )
    facts.truncated.append(f"clip ends at {usable:.1f} s instead of {facts.duration:.1f} s (file cut short)")
    facts.duration = round(usable, 6)
    return True


def _slack(duration: float) -> float:
    """How far a stream may end before the clip's end without being called short."""
    return max(0.5, 0.05 * duration)


# ----------------------------------------------------------------------------- audio


def _read_audio(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    start: float,
    facts: MediaFacts,
    cfg: MediaConfig,
):
    """Mono 16 kHz float32 audio from the clip's start, cut at max_audio_seconds.

    The samples are resampled frame by frame into one buffer sized from the header's duration, so an
    hour of sound (230 MB) is held once, not again as chunks and their concatenation. Returns the
    samples and where the track ended (seconds), or None for the end when it was cut, so the caller
    can tell a short track or a truncated file from a deliberate cut.
    """
    keep = _audio_limit(facts, cfg)
    limit = int(round(keep * SAMPLE_RATE)) if keep is not None else None
    samples = _Samples(limit if limit is not None else int(math.ceil(facts.duration * SAMPLE_RATE)) + SAMPLE_RATE)
    damaged, resampler, setup = [0], None, None
    for frame in _decode(container, stream, damaged):
        if samples.end is None:  # a track that starts late is padded so sample i sits at i / 16000 s
            samples.end = int(round(((frame.time - start) if frame.time is not None else 0.0) * SAMPLE_RATE))
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != setup:  # a mid-stream format change needs a fresh resampler
            if resampler is not None:
                samples.add(resampler.resample(None))
            resampler, setup = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE), key
        samples.add(resampler.resample(frame))
        if limit is not None and samples.end >= limit:
            break
    else:
        if resampler is not None:
            samples.add(resampler.resample(None))
    audio = samples.take(limit)
    if damaged[0]:
        facts.warnings.append(f"audio: skipped {damaged[0]} damaged packet(s) or a broken end of file")
    if len(audio) == 0:
        if not facts.has_video:
            raise MediaError(f"{facts.path}: the audio track holds no decodable samples; {REENCODE}")
        facts.warnings.append("the audio track is empty (no samples): answers use the picture only")
        return None, None
    facts.audio_cut = limit is not None and len(audio) >= limit
    return np.clip(audio, -1.0, 1.0, out=audio), None if facts.audio_cut else len(audio) / SAMPLE_RATE


class _Samples:
    """A growing float32 buffer of the clip's samples; `end` is where the next one goes (negative:
    that many samples before the clip's start are still to be dropped, e.g. an early audio track)."""

    def __init__(self, expected: int):
        self.buffer, self.end = np.zeros(max(1, expected), np.float32), None  # zero pages cost no memory until written

    def add(self, frames: Iterator[av.AudioFrame]) -> None:
        for f in frames:
            x = f.to_ndarray().reshape(-1)
            drop = min(len(x), max(0, -self.end))
            x, self.end = x[drop:], self.end + drop
            if self.end + len(x) > len(self.buffer):
                grown = np.zeros(max(2 * len(self.buffer), self.end + len(x)), np.float32)
                grown[: self.end] = self.buffer[: self.end]
                self.buffer = grown
            self.buffer[self.end : self.end + len(x)] = x
            self.end += len(x)

    def take(self, limit: int | None) -> np.ndarray:
        return self.buffer[: min(max(0, self.end or 0), limit if limit is not None else len(self.buffer))]


def _audio_limit(facts: MediaFacts, cfg: MediaConfig) -> float | None:
    """Seconds of sound to keep: max_audio_seconds, or all of it (None) when the clip is within rounding of it."""
    return cfg.max_audio_seconds if facts.duration > cfg.max_audio_seconds + ROUNDING else None


def _audio_facts(audio: np.ndarray, facts: MediaFacts, cfg: MediaConfig) -> None:
    facts.audio_seconds = round(len(audio) / SAMPLE_RATE, 6)
    if facts.audio_cut:
        facts.truncated.append(f"audio cut to the first {cfg.max_audio_seconds:.1f} s of {facts.duration:.1f} s")
    elif facts.audio_seconds < min(facts.duration, cfg.max_audio_seconds) - _slack(facts.duration):
        facts.warnings.append(f"audio track ends at {facts.audio_seconds:.1f} s of the {facts.duration:.1f} s clip")
    if not np.any(audio):
        facts.audio_silent = True
        facts.warnings.append("audio track is silent (every sample is 0)")


# ----------------------------------------------------------------------------- video


def _read_video(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    start: float,
    facts: MediaFacts,
    cfg: MediaConfig,
    audio_end: float | None,
    progress: bool,
):
    """Frames at sample_times(), seeking to each; recovers from short files and bad seeks."""
    times, notes = sample_times(facts.duration, cfg)
    picked, end, damaged = _try_seek(container, stream, start + times, progress)
    ends_early = end is not None and end - start < facts.duration - _slack(facts.duration)
    if picked is not None and (None in picked or ends_early):
        # The picture ends early: a truncated download, or a video track shorter than the sound.
        if end is None:
            container.seek(0)
        video_end = end - start if end is not None else _scan_end(container, [stream])
        usable = max(video_end or 0.0, audio_end or 0.0)
        if audio_end is None and facts.has_audio:
            usable = facts.duration  # the sound was cut by max_audio_seconds, so it runs on
        if _cut_short(facts, usable):
            times, notes = sample_times(facts.duration, cfg)
        container.seek(0)
        picked, _, damaged = _try_seek(container, stream, start + times, progress)
    if picked is None or None in picked:  # seeking failed: one decoding pass from the start instead
        with av.open(facts.path, metadata_errors="ignore") as fresh:
            damaged = [0]
            picked = _scan_frames(fresh, fresh.streams[stream.index], start + times, damaged)
            if None in picked:
                raise MediaError(f"{facts.path}: no video frame could be decoded; the file is damaged: {REENCODE}")
            frames = _convert(picked, cfg.max_side)
    else:
        frames = _convert(picked, cfg.max_side)
    if damaged[0]:
        facts.warnings.append(f"video: skipped {damaged[0]} damaged packet(s) or a broken end of file")
    facts.truncated.extend(notes)
    if len(picked) > 1 and len({id(f) for f in picked}) == 1:
        facts.warnings.append(f"only one distinct frame could be decoded; it is repeated {len(picked)} times")
    return frames, times


def _convert(picked: list, max_side: int) -> np.ndarray:
    """Stack the frames as RGB, all at the first one's scaled size."""
    size = _target_size(picked[0], max_side)
    arrays, cache = [], {}
    for f in picked:  # the same frame may stand for several times when sampling above the source rate
        if id(f) not in cache:
            cache[id(f)] = _to_rgb(f, size)
        arrays.append(cache[id(f)])
    return np.stack(arrays)


def _try_seek(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, targets: np.ndarray, progress: bool
):
    """_seek_frames, or (None, None, ...) when this file cannot seek."""
    damaged = [0]
    try:
        return (*_seek_frames(container, stream, targets, damaged, progress), damaged)
    except av.FFmpegError:
        return None, None, damaged


def _seek_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: np.ndarray,
    damaged: list[int],
    progress: bool,
):
    """For each target time (seconds, increasing) the frame showing then: the last with time <= t,
    else the first after. Returns the frames (None where nothing decoded) and, when the stream
    ran out, the time just past its last frame."""
    picked, frames, prev, ahead, end, keys = [], None, None, None, None, _KeyTimes(stream)
    for t in tqdm(targets, desc="frames", unit="frame", leave=False, disable=not progress or len(targets) < 16):
        lost = ahead is None and prev is None  # the last seek found nothing: try again
        if frames is None or lost or (ahead is not None and keys.worth_seeking(ahead.time, t)):
            frames, prev, ahead = _seek_to(container, stream, t, damaged, keys)
        while ahead is not None and ahead.time <= t + EPS:
            prev, ahead = ahead, keys.next(frames)
            if ahead is None:
                end = prev.time + _frame_seconds(prev, stream)
            elif ahead.key_frame and keys.missed(ahead.time) and keys.worth_seeking(ahead.time, t):
                frames, prev, ahead = _seek_to(container, stream, t, damaged, keys)
        picked.append(prev if prev is not None else ahead)
    return picked, end


def _seek_to(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    t: float,
    damaged: list,
    keys: _KeyTimes,
):
    """Seek so that decoding starts at or before t: (frames, None, the first frame). Without an index
    (MPEG-TS) ffmpeg lands on the first keyframe after the point asked, so ask a keyframe interval back."""
    back = keys.interval if keys.partial else 0.0
    while True:
        at = max(0.0, t - back)
        container.seek(int(at / stream.time_base), stream=stream, backward=True)
        frames, keys.last_key = _decode(container, stream, damaged), None
        first = keys.next(frames)
        if first is None or first.time <= t + EPS or at == 0.0:
            return frames, None, first
        back = max(2 * back, SEEK_AHEAD)


class _KeyTimes:
    """Keyframe times from the stream's index, to seek only when it saves decoding.

    A seek lands on the keyframe before the target, so when no keyframe lies between the
    decoder's position and the target, decoding on is cheaper (clips with one keyframe
    every 8 s are common). Without an index (matroska before its cues are read) it goes by
    distance: it seeks when the target is more than a keyframe interval (the longest seen while
    decoding) ahead. Likewise once decoding meets a keyframe the index lacks: ffmpeg builds the
    index of an MPEG-TS file from what it has read, so it holds little of the file.
    """

    def __init__(self, stream: av.video.stream.VideoStream):
        self.stream, self.count, self.times, self.lacking = stream, -1, np.zeros(0), False
        self.interval, self.last_key = SEEK_AHEAD, None  # longest keyframe interval decoded; last keyframe

    def next(self, frames: Iterator[av.VideoFrame]) -> av.VideoFrame | None:
        """The next frame with a time, noting keyframe intervals on the way."""
        frame = _next_timed(frames)
        if frame is not None and frame.key_frame:
            if self.last_key is not None:
                self.interval = max(self.interval, frame.time - self.last_key)
            self.last_key = frame.time
        return frame

    def _read(self) -> None:
        entries = self.stream.index_entries
        if len(entries) != self.count:
            self.count = len(entries)
            tb = self.stream.time_base
            self.times = np.sort([float(e.timestamp * tb) for e in entries if e.is_keyframe])

    @property
    def partial(self) -> bool:
        """No index to go by: none (yet), or one that lacked a keyframe decoding met."""
        self._read()
        return self.lacking or self.count < 2

    def worth_seeking(self, position: float, target: float) -> bool:
        if self.partial:
            return target - position > self.interval
        i = np.searchsorted(self.times, position, side="right")
        return i < len(self.times) and self.times[i] <= target

    def missed(self, keyframe: float) -> bool:
        """Whether the index lacks this decoded keyframe (so is partial from now on)."""
        if not self.partial:  # index times may be decoding times, a few frames early
            self.lacking = not len(self.times) or float(np.abs(self.times - keyframe).min()) > SEEK_AHEAD / 2
            return self.lacking
        return False


def _scan_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, targets: np.ndarray, damaged: list[int]
) -> list:
    """One decoding pass from the start, for files whose seeking fails; same choice rule."""
    picked, prev, i = [None] * len(targets), None, 0
    for frame in _decode(container, stream, damaged):
        if frame.time is None:
            continue
        while i < len(targets) and targets[i] + EPS < frame.time:
            picked[i] = prev if prev is not None else frame
            i += 1
        if i == len(targets):
            break
        prev = frame
    for j in range(i, len(targets)):
        picked[j] = prev
    return picked


def _next_timed(frames: Iterator[av.VideoFrame]):
    for f in frames:
        if f.time is not None:
            return f
    return None


def _frame_seconds(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float:
    if frame.duration and frame.time_base:
        return float(frame.duration * frame.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.0


def _target_size(frame: av.VideoFrame, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side at most max_side, keeping the aspect ratio."""
    w, h = frame.width, frame.height
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] at `size`, turned upright when the file says it is rotated (phones)."""
    rotation = getattr(frame, "rotation", 0) or 0
    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
