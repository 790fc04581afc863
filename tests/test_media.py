"""avllm.media: decoding, sampling, limits and the errors a user can cause."""

from __future__ import annotations

import math
import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import CLIP_FPS, CLIP_HEIGHT, CLIP_SECONDS, CLIP_WIDTH, level_to_index, write_clip

from avllm import media
from avllm.config import MediaConfig
from avllm.errors import MediaError
from avllm.inference import with_frames
from avllm.media import SAMPLE_RATE, load_clip, probe, sample_times


def picked_indices(clip) -> list[int]:
    """Which source frame each sampled frame is, read from its grey level (see conftest)."""
    return [level_to_index(f.mean()) for f in clip.frames]


def expected_indices(times, fps: int = CLIP_FPS) -> list[int]:
    """The frame showing at time t: the last one with pts <= t."""
    return [math.floor(t * fps + 1e-9) for t in times]


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


# ----------------------------------------------------------------------------- sample_times


def test_uniform_times_sit_at_segment_centres():
    times, notes = sample_times(4.0, MediaConfig(num_frames=8))
    np.testing.assert_allclose(times, (np.arange(8) + 0.5) * 0.5)
    assert times.dtype == np.float64 and notes == []


def test_fps_times_are_spaced_and_centred():
    times, notes = sample_times(4.3, MediaConfig(fps=2.0))
    assert len(times) == 8 and notes == []
    np.testing.assert_allclose(np.diff(times), 0.5)
    assert times[0] == pytest.approx(4.3 - times[-1])  # centred: equal margins


def test_fps_is_capped_at_max_frames_and_spread_over_the_clip():
    times, notes = sample_times(30.0, MediaConfig(fps=2.0, max_frames=32))
    assert len(times) == 32
    np.testing.assert_allclose(times, (np.arange(32) + 0.5) * 30.0 / 32)
    assert notes == ["frames capped at 32 (fps 2.0 asks for 60)"]


def test_num_frames_is_capped_at_max_frames():
    times, notes = sample_times(10.0, MediaConfig(num_frames=64, max_frames=16))
    assert len(times) == 16 and notes == ["frames capped at 16 (num_frames asks for 64)"]


def test_long_clips_get_one_frame_per_frame_every_seconds_up_to_max_frames():
    cfg = MediaConfig()  # num_frames 8 up to long_clip (120 s), then one per 15 s, at most max_frames (64)
    assert [len(sample_times(d, cfg)[0]) for d in (4.0, 100.0, 120.0, 135.0)] == [8, 8, 8, 9]
    times, notes = sample_times(600.0, cfg)
    assert len(times) == 40 and notes == [] and np.allclose(np.diff(times), 15.0)
    times, notes = sample_times(3600.0, cfg)
    assert len(times) == 64 and notes == ["frames capped at 64 (one per 15 s asks for 240)"]
    assert len(sample_times(600.0, MediaConfig(frame_every=None))[0]) == 8
    assert len(sample_times(600.0, with_frames(MediaConfig(), 8))[0]) == 8  # asked for: that many at any length


def test_very_short_clip_still_gets_one_frame():
    times, _ = sample_times(0.2, MediaConfig(fps=1.0))
    np.testing.assert_allclose(times, [0.1])


def test_sample_times_rejects_a_non_positive_duration():
    with pytest.raises(ValueError):
        sample_times(0.0, MediaConfig())


# ----------------------------------------------------------------------------- a video with sound


def test_video_with_sound(av_clip):
    clip = load_clip(av_clip, MediaConfig(num_frames=8))
    f = clip.facts
    assert clip.duration == f.duration == pytest.approx(CLIP_SECONDS, abs=0.05)
    assert (f.container, f.video_codec, f.audio_codec) == ("mov", "h264", "aac")
    assert (f.width, f.height, f.fps) == (CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS)
    assert (f.audio_channels, f.audio_sample_rate) == (2, 44100)
    assert f.has_video and f.has_audio and not f.audio_silent
    assert f.truncated == [] and f.warnings == []

    assert clip.frames.shape == (8, CLIP_HEIGHT, CLIP_WIDTH, 3) and clip.frames.dtype == np.uint8
    assert f.frames == 8
    np.testing.assert_allclose(clip.frame_times, sample_times(f.duration, MediaConfig(num_frames=8))[0])
    assert picked_indices(clip) == expected_indices(clip.frame_times)

    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert len(clip.audio) == pytest.approx(CLIP_SECONDS * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)
    assert f.audio_seconds == pytest.approx(len(clip.audio) / SAMPLE_RATE)
    assert dominant_hz(clip.audio) == pytest.approx(440.0, abs=2.0)
    # 0.5 per channel; the stereo-to-mono downmix scales each channel by about 0.707
    assert np.abs(clip.audio).max() == pytest.approx(0.707, abs=0.05)
    assert set(f.to_dict()) >= {"path", "duration", "frames", "audio_seconds", "truncated", "warnings"}


def test_probe_reads_headers_only(av_clip):
    facts = probe(av_clip)
    assert facts.frames == 0 and facts.audio_seconds == 0.0
    assert facts.duration == pytest.approx(CLIP_SECONDS, abs=0.05)
    assert facts.has_video and facts.has_audio and facts.video_codec == "h264"


def test_fps_sampling_picks_the_frame_showing_at_each_time(av_clip):
    clip = load_clip(av_clip, MediaConfig(fps=5.0))
    assert len(clip.frames) == 20 and clip.facts.truncated == []
    np.testing.assert_allclose(np.diff(clip.frame_times), 0.2)
    assert picked_indices(clip) == expected_indices(clip.frame_times)


def test_sampling_above_the_source_rate_repeats_frames(av_clip):
    clip = load_clip(av_clip, MediaConfig(fps=20.0, max_frames=100))
    assert len(clip.frames) == 80
    assert np.all(np.diff(clip.frame_times) > 0)
    assert picked_indices(clip) == expected_indices(clip.frame_times)


def test_fps_cap_is_reported(av_clip):
    clip = load_clip(av_clip, MediaConfig(fps=30.0, max_frames=16))
    assert len(clip.frames) == clip.facts.frames == 16
    assert clip.facts.truncated == ["frames capped at 16 (fps 30.0 asks for 120)"]
    assert picked_indices(clip) == expected_indices(clip.frame_times)


@pytest.mark.parametrize("max_side, shape", [(32, (24, 32)), (20, (15, 20)), (1000, (48, 64))])
def test_frames_are_scaled_down_keeping_aspect(av_clip, max_side, shape):
    clip = load_clip(av_clip, MediaConfig(num_frames=2, max_side=max_side))
    assert clip.frames.shape == (2, *shape, 3)
    assert (clip.facts.width, clip.facts.height) == (CLIP_WIDTH, CLIP_HEIGHT)  # source size stays


def test_audio_is_cut_at_max_audio_seconds(av_clip):
    clip = load_clip(av_clip, MediaConfig(max_audio_seconds=1.5))
    assert len(clip.audio) == int(1.5 * SAMPLE_RATE)
    assert clip.facts.audio_seconds == pytest.approx(1.5)
    assert clip.facts.truncated == ["audio cut to the first 1.5 s of 4.0 s"] and clip.facts.audio_cut
    assert len(clip.frames) == 8 and clip.frame_times[-1] > 3.0  # the picture is not cut


def test_audio_is_clipped_to_unit_range(clip_dir):
    loud = write_clip(clip_dir / "loud.mp4", seconds=1.0, amplitude=0.99)
    audio = load_clip(loud).audio
    assert np.abs(audio).max() <= 1.0
    assert np.abs(audio).max() > 0.99  # 0.99 * 2 * 0.707 would be 1.4 before clipping


def test_video_without_sound(video_only_clip):
    clip = load_clip(video_only_clip)
    f = clip.facts
    assert clip.audio is None and not f.has_audio and f.audio_codec is None
    assert f.audio_seconds == 0.0 and not f.audio_silent
    assert any("no audio track" in w for w in f.warnings)
    assert picked_indices(clip) == expected_indices(clip.frame_times)


def test_silent_track(silent_clip):
    clip = load_clip(silent_clip)
    assert clip.facts.has_audio and clip.facts.audio_silent
    assert clip.audio is not None and not np.any(clip.audio)
    assert "audio track is silent (every sample is 0)" in clip.facts.warnings


@pytest.mark.parametrize(
    "fixture, container, codecs",
    [
        ("mkv_clip", "matroska", ("h264", "aac")),
        ("webm_clip", "matroska", ("vp9", "opus")),
    ],
)
def test_other_containers(request, fixture, container, codecs):
    clip = load_clip(request.getfixturevalue(fixture), MediaConfig(fps=4.0))
    f = clip.facts
    assert (f.container, f.video_codec, f.audio_codec) == (container, *codecs)
    assert f.duration == pytest.approx(CLIP_SECONDS, abs=0.05)
    assert len(clip.frames) == 16 and picked_indices(clip) == expected_indices(clip.frame_times)
    assert len(clip.audio) == pytest.approx(CLIP_SECONDS * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)
    assert dominant_hz(clip.audio) == pytest.approx(440.0, abs=2.0)


@pytest.mark.parametrize(
    "fixture, rate, channels, peak",
    [
        ("audio_only_wav", 22050, 1, 0.5),
        ("audio_only_flac", 44100, 2, 0.707),
    ],
)
def test_audio_only_files(request, fixture, rate, channels, peak):
    clip = load_clip(request.getfixturevalue(fixture))
    f = clip.facts
    assert clip.frames.shape == (0, 0, 0, 3) and clip.frame_times.shape == (0,)
    assert not f.has_video and f.has_audio and f.frames == 0 and f.width is None
    assert (f.audio_sample_rate, f.audio_channels) == (rate, channels)
    assert len(clip.audio) == pytest.approx(CLIP_SECONDS * SAMPLE_RATE, abs=0.01 * SAMPLE_RATE)
    assert np.abs(clip.audio).max() == pytest.approx(peak, abs=0.02)
    assert dominant_hz(clip.audio) == pytest.approx(440.0, abs=2.0)
    assert any("no video track" in w for w in f.warnings)


# ----------------------------------------------------------------------------- damaged files


def test_truncated_file_with_readable_header_decodes_partly(truncated_mp4):
    clip = load_clip(truncated_mp4, MediaConfig(num_frames=8))
    f = clip.facts
    assert 3.0 < f.duration < 5.0  # half of the 8 s clip survives
    assert any("truncated" in w for w in f.warnings)
    assert any("8.0 s" in note and "cut short" in note for note in f.truncated)
    assert len(clip.frames) == 8 and clip.frame_times[-1] < f.duration
    assert picked_indices(clip) == expected_indices(clip.frame_times)
    assert len(clip.audio) == pytest.approx(f.duration * SAMPLE_RATE, abs=0.3 * SAMPLE_RATE)


def test_failed_seeking_falls_back_to_one_decoding_pass(av_clip, monkeypatch):
    def broken_seek(*args, **kwargs):
        raise av.error.PermissionError(1, "seek not allowed")  # any FFmpegError

    monkeypatch.setattr(media, "_seek_frames", broken_seek)
    clip = load_clip(av_clip, MediaConfig(fps=5.0))
    assert len(clip.frames) == 20
    assert picked_indices(clip) == expected_indices(clip.frame_times)


def test_decoding_errors_become_media_errors(av_clip, monkeypatch):
    def broken(*args, **kwargs):
        raise av.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(media, "_read_audio", broken)
    with pytest.raises(MediaError, match=r"decoding failed") as info:
        load_clip(av_clip)
    assert str(info.value).startswith(str(av_clip))


# ----------------------------------------------------------------------------- files a user cannot use


@pytest.fixture(scope="session")
def bad_files(clip_dir, corrupt_file, text_file, truncated_mp4_no_index):
    """name -> (path, words the message must contain)"""
    empty = clip_dir / "empty.mp4"
    empty.write_bytes(b"")
    folder = clip_dir / "a_folder.mp4"
    folder.mkdir(exist_ok=True)
    no_samples = clip_dir / "no_samples.wav"  # a WAV header with an empty data chunk
    no_samples.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", 0)
    )
    random_flac = clip_dir / "random.flac"  # ffmpeg trusts the suffix, finds a stream, reads nothing
    random_flac.write_bytes(corrupt_file.read_bytes())
    data_only = clip_dir / "data_only.ts"
    with av.open(str(data_only), "w", format="mpegts") as out:
        stream = out.add_data_stream()
        packet = av.Packet(b"not audio, not video")
        packet.stream, packet.pts, packet.dts, packet.time_base = stream, 0, 0, Fraction(1, 90000)
        out.mux(packet)
    svg = clip_dir / "picture.svg"  # ffmpeg finds a video stream it has no decoder for
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>')
    fifo = clip_dir / "pipe.mp4"  # opening it to read would wait for a writer forever
    if not fifo.exists():
        os.mkfifo(fifo)
    return {
        "missing": (clip_dir / "nope.mp4", ["no such file"]),
        "svg image": (svg, ["cannot be decoded"]),
        "fifo": (fifo, ["not a regular file"]),
        "device": (Path("/dev/zero"), ["not a regular file"]),
        "directory": (folder, ["directory"]),
        "empty": (empty, ["empty"]),
        "text": (text_file, ["text file"]),
        "corrupt": (corrupt_file, ["corrupt"]),
        "truncated without index": (truncated_mp4_no_index, ["corrupt, truncated"]),
        "random bytes as flac": (random_flac, ["zero duration"]),
        "no samples": (no_samples, ["zero duration"]),
        "neither stream": (data_only, ["neither a video nor an audio stream", "data"]),
    }


BAD = [
    "missing",
    "svg image",
    "fifo",
    "device",
    "directory",
    "empty",
    "text",
    "corrupt",
    "truncated without index",
    "random bytes as flac",
    "no samples",
    "neither stream",
]


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("reader", [probe, load_clip], ids=["probe", "load_clip"])
def test_unusable_files_raise_media_error_naming_the_file(bad_files, name, reader):
    path, words = bad_files[name]
    with pytest.raises(MediaError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for word in words:
        assert word in message
    assert ";" in message or ":" in message[len(str(path)) + 1 :]  # a problem and a fix


def test_video_whose_audio_track_is_empty_answers_from_the_picture(clip_dir):
    """An audio stream with no samples in it: the picture is still used, and the sound called empty."""
    path = clip_dir / "empty_audio.mkv"  # matroska keeps a track that holds no packets (mp4 drops it)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=CLIP_FPS)
        video.width, video.height, video.pix_fmt = CLIP_WIDTH, CLIP_HEIGHT, "yuv420p"
        audio = out.add_stream("aac", rate=44100, layout="stereo")
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((CLIP_HEIGHT, CLIP_WIDTH, 3), 100, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, CLIP_FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    clip = load_clip(path, MediaConfig(num_frames=3))
    assert clip.audio is None and clip.frames.shape[0] == 3
    assert clip.facts.has_audio and any("audio track is empty" in w for w in clip.facts.warnings)


def test_text_file_with_a_video_suffix(clip_dir):
    path = clip_dir / "notes.mp4"
    path.write_text("definitely not a video\n" * 10)
    with pytest.raises(MediaError, match="text file"):
        probe(path)


def test_file_over_the_size_limit(av_clip):
    with pytest.raises(MediaError, match=r"MiB.*max_file_mb") as info:
        load_clip(av_clip, MediaConfig(max_file_mb=0.001))
    assert str(info.value).startswith(str(av_clip))


def test_file_over_the_duration_limit(av_clip):
    with pytest.raises(MediaError, match=r"lasts 4\.0 s.*max_duration") as info:
        probe(av_clip, MediaConfig(max_duration=2.0))
    assert str(info.value).startswith(str(av_clip))


@pytest.mark.parametrize("suffix", ["mkv", "ts"])
def test_duration_limit_allows_for_container_rounding(clip_dir, suffix):
    """The streams of a 4 s clip read as 4.02 s in matroska and 4.04 s in MPEG-TS (the audio's last
    packet); a limit equal to the streams' length takes them, sound and all."""
    path = write_clip(clip_dir / f"rounding.{suffix}")
    limits = MediaConfig(max_duration=CLIP_SECONDS, max_audio_seconds=CLIP_SECONDS)
    assert probe(path).duration > CLIP_SECONDS  # the rounding this test is about
    clip = load_clip(path, limits)
    assert clip.facts.truncated == [] and clip.facts.audio_seconds > CLIP_SECONDS - 0.05
    with pytest.raises(MediaError, match="max_duration"):
        probe(path, MediaConfig(max_duration=CLIP_SECONDS - 1.0))


def test_rotated_frames_are_turned_upright():
    class Frame:  # what PyAV reports for a phone video stored sideways
        rotation, width, height = 90, 4, 2

        def to_ndarray(self, format, width, height, interpolation):
            return np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)

    out = media._to_rgb(Frame(), (4, 2))
    assert out.shape == (4, 2, 3)
    np.testing.assert_array_equal(out, np.rot90(Frame().to_ndarray("rgb24", 4, 2, None)))


# ----------------------------------------------------------------------------- real clips (../shared/clips)


def test_real_clip_without_audio_track(shared_clips):
    clip = load_clip(shared_clips / "gradio-muted_video_sample.mp4", MediaConfig(num_frames=4, max_side=224))
    f = clip.facts
    assert clip.audio is None and not f.has_audio
    assert f.duration == pytest.approx(5.0, abs=0.01) and (f.width, f.height) == (480, 270)
    assert clip.frames.shape == (4, 126, 224, 3)
    assert any("no audio track" in w for w in f.warnings)


def test_real_clip_with_silent_track(shared_clips):
    clip = load_clip(shared_clips / "ffmpegpython-in.mp4", MediaConfig(num_frames=2, max_side=64))
    assert clip.facts.has_audio and clip.facts.audio_silent
    assert len(clip.audio) == pytest.approx(7.04 * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)
    assert "audio track is silent (every sample is 0)" in clip.facts.warnings


def test_real_audio_only_flac(shared_clips):
    clip = load_clip(shared_clips / "whisper-jfk.flac")
    f = clip.facts
    assert not f.has_video and clip.frames.shape == (0, 0, 0, 3)
    assert (f.container, f.audio_codec, f.audio_channels, f.audio_sample_rate) == ("flac", "flac", 2, 44100)
    assert len(clip.audio) == 11 * SAMPLE_RATE
    assert np.abs(clip.audio).max() <= 1.0 and np.abs(clip.audio).max() > 0.5


def test_real_webm_vp8_vorbis(shared_clips):
    path = shared_clips / "moviepy-big_buck_bunny_0_30.webm"
    facts = probe(path)
    assert (facts.container, facts.video_codec, facts.audio_codec) == ("matroska", "vp8", "vorbis")
    assert facts.duration == pytest.approx(30.0, abs=0.01) and (facts.width, facts.height) == (1280, 720)
    clip = load_clip(path, MediaConfig(num_frames=3, max_side=128, max_audio_seconds=10.0))
    assert clip.frames.shape == (3, 72, 128, 3)
    assert len(clip.audio) == 10 * SAMPLE_RATE
    assert clip.facts.truncated == ["audio cut to the first 10.0 s of 30.0 s"]


def decoded_video_frames(monkeypatch) -> list[int]:
    """A counter of the video frames media decodes from now on (in a one-item list)."""
    count, decode = [0], media._decode

    def counting(container, stream, damaged):
        for frame in decode(container, stream, damaged):
            count[0] += isinstance(frame, av.VideoFrame)
            yield frame

    monkeypatch.setattr(media, "_decode", counting)
    return count


def full_decode_frames(path, frame_times: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frames one decoding pass from the start picks for these times, at `size` (width, height)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = container.start_time / 1e6
        return np.stack(
            [media._to_rgb(f, size) for f in media._scan_frames(container, stream, start + frame_times, [0])]
        )


@pytest.mark.parametrize("suffix", ["mp4", "ts", "mkv"])
def test_seeking_decodes_about_one_keyframe_interval_per_frame(clip_dir, monkeypatch, suffix):
    """Decoding follows the number of sampled frames, not the file's length, whatever the container:
    MPEG-TS has no index (ffmpeg builds a partial one as it reads) and lands past the target on a seek."""
    path = write_clip(clip_dir / f"thirty_seconds.{suffix}", seconds=30.0)  # a keyframe every 10 frames
    decoded = decoded_video_frames(monkeypatch)
    clip = load_clip(path, MediaConfig(num_frames=4))
    assert decoded[0] <= 4 * 2 * 10  # a whole pass from the first to the last frame decodes over 220
    expected = full_decode_frames(path, clip.frame_times, (clip.frames.shape[2], clip.frames.shape[1]))
    np.testing.assert_array_equal(clip.frames, expected)


def test_real_clip_seeking_matches_a_full_decode(shared_clips):
    """The seek-per-frame path picks exactly what one pass from the start would."""
    path = shared_clips / "videollama-boat.mp4"
    cfg = MediaConfig(fps=2.0, max_side=96)
    clip = load_clip(path, cfg)
    expected = full_decode_frames(path, clip.frame_times, (clip.frames.shape[2], clip.frames.shape[1]))
    np.testing.assert_array_equal(clip.frames, expected)
