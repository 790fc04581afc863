"""`avllm data import`: each public layout (hand-written fixtures under fixtures/import/) to our
JSONL, which must then pass our own validator, media included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from avllm.cli import main
from avllm.data.formats import validate
from avllm.data.importers import FORMATS, readers, run_import
from avllm.data.importers.captions import AUDIO_QUESTIONS, AUDIO_VISUAL_QUESTIONS
from avllm.data.importers.qa import SHORT_ANSWER
from avllm.errors import DataError
from avllm.eval.tasks import MusicAVQATask

FIXTURES = Path(__file__).parent / "fixtures" / "import"


@pytest.fixture
def place(tmp_path, av_clip):
    """place(name, ...) links the synthetic clip under tmp/media by the dataset's own file names."""
    root = tmp_path / "media"

    def link(*names: str, clip: Path = av_clip) -> Path:
        for name in names:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(clip, target)
        root.mkdir(exist_ok=True)
        return root

    return link


def imported(fmt: str, src: Path | str, out: Path, **kwargs) -> tuple[list[dict], object]:
    """Run the import, check the written file with our validator (media included), return its rows."""
    summary = run_import(fmt, str(src), out, progress=False, **kwargs)
    records, problems = validate(out, summary.fmt, True, kwargs.get("allow_outside_media", False))
    assert problems == [] and len(records) == summary.written
    return [json.loads(line) for line in out.read_text().splitlines()], summary


def test_registry_has_the_eight_layouts():
    assert list(FORMATS) == [
        "llava",
        "audiocaps",
        "clotho",
        "valor",
        "music-avqa",
        "avqa",
        "trl-dpo",
        "llava-hound-dpo",
    ]


def test_videollama2_conversations(place, audio_only_wav):
    media = place("videos/boat.mp4")
    place("audio/bird-twitter-car.wav", clip=audio_only_wav)
    rows, summary = imported("llava", FIXTURES / "llava/videollama2_av.json", media / "train.jsonl", media_dir=media)
    assert [r["media"] for r in rows] == ["audio/bird-twitter-car.wav", "videos/boat.mp4"]
    audio, video = rows
    assert audio["conversations"][0] == {
        "role": "user",
        "content": "Please describe the sound event within the audio.\n<video>",
    }
    assert [t["role"] for t in video["conversations"]] == ["user", "assistant", "user", "assistant"]
    assert video["conversations"][2]["content"] == "What can be heard?"
    assert summary.read == 5 and summary.written == 2
    assert dict(summary.skipped) == {
        "image record (avllm takes video or audio clips)": 1,
        "media file missing": 1,
        "no media (text-only record)": 1,
    }
    assert summary.examples["media file missing"] == ["videos/not-downloaded.mp4"]


def test_video_chatgpt_features_name_maps_to_the_video(place):
    media = place("v_AbCdEfGhIj0.mp4", "v_KlMnOpQrSt1.mkv")
    rows, _ = imported("llava", FIXTURES / "llava/video_chatgpt_training.json", media / "vc.jsonl", media_dir=media)
    assert [r["media"] for r in rows] == ["v_AbCdEfGhIj0.mp4", "v_AbCdEfGhIj0.mp4", "v_KlMnOpQrSt1.mkv"]
    assert len({r["id"] for r in rows}) == 3  # the release reuses the video id for every question
    # <video> before or after the question in the source: after it here, as avllm asks.
    assert [r["conversations"][0]["content"] for r in rows[:2]] == [
        "What is the woman doing in the kitchen?\n<video>",
        "What does she do after chopping?\n<video>",
    ]


def test_videoinstruct100k_question_answer_records(place):
    media = place("v_AbCdEfGhIj0.mp4", "v_KlMnOpQrSt1.mp4")
    rows, _ = imported("llava", FIXTURES / "llava/videoinstruct100k.json", media / "vi.jsonl", media_dir=media)
    assert rows[1]["conversations"] == [
        {"role": "user", "content": "What sport is being played?\n<video>"},
        {"role": "assistant", "content": "Volleyball."},
    ]


def test_audiocaps_names_and_phrasings(place, audio_only_wav):
    media = place("100001.wav", "YKlMnOpQrSt1.flac", clip=audio_only_wav)
    rows, summary = imported("audiocaps", FIXTURES / "audiocaps/val.csv", media / "ac.jsonl", media_dir=media)
    assert [r["media"] for r in rows] == ["100001.wav", "YKlMnOpQrSt1.flac"]
    question, answer = rows[0]["conversations"]
    assert question["content"].removesuffix("\n<video>") in AUDIO_QUESTIONS
    assert answer["content"] == "A dog barks twice, then a car passes"
    assert summary.examples["media file missing"] == ["100003"]
    again, _ = imported("audiocaps", FIXTURES / "audiocaps/val.csv", media / "ac2.jsonl", media_dir=media)
    assert again == rows  # the phrasing depends on the record, not on chance


def test_clotho_every_caption_becomes_a_record(place, audio_only_wav):
    media = place("Forest at dawn.wav", "kitchen_sink_01.wav", clip=audio_only_wav)
    src = FIXTURES / "clotho/clotho_captions_evaluation.csv"
    rows, summary = imported("clotho", src, media / "clotho.jsonl", media_dir=media)
    assert len(rows) == 9 and dict(summary.skipped) == {"empty caption": 1}
    assert {r["media"] for r in rows} == {"Forest at dawn.wav", "kitchen_sink_01.wav"}
    answers = [r["conversations"][1]["content"] for r in rows[:5]]
    assert answers[1] == "Many birds chirp, and leaves rustle in a light wind."
    assert len({r["conversations"][0]["content"] for r in rows}) > 1  # several phrasings in use


def test_valor_clip_by_full_id_or_youtube_id(place):
    media = place("AbCdEfGhIj0_30.000_40.000.mp4", "KlMnOpQrSt1.webm")
    rows, summary = imported("valor", FIXTURES / "valor/desc_test.json", media / "valor.jsonl", media_dir=media)
    assert [r["media"] for r in rows] == ["AbCdEfGhIj0_30.000_40.000.mp4", "KlMnOpQrSt1.webm"]
    assert rows[0]["conversations"][0]["content"].removesuffix("\n<video>") in AUDIO_VISUAL_QUESTIONS
    assert summary.skipped["media file missing"] == 1


def test_music_avqa_as_qa_matches_the_eval_reader(place):
    media = place("00000823.mp4", "00001190.mp4")
    src = FIXTURES / "music-avqa/avqa-test.json"
    rows, summary = imported("music-avqa", src, media / "qa.jsonl", media_dir=media)
    assert rows[1]["question"] == "Where is the first sounding instrument?" + SHORT_ANSWER
    assert (rows[1]["answer"], rows[1]["kind"]) == ("left", "audio-visual/location")
    assert summary.skipped["media file missing"] == 1
    # The same questions, answers and kinds as `avllm eval --tasks music-avqa:FILE` reads.
    items = [i for i in MusicAVQATask(str(src), str(media)).load().items if i.media is not None]
    assert [(r["question"], r["answer"], r["kind"]) for r in rows] == [(i.question, i.answer, i.kind) for i in items]


def test_music_avqa_as_instructions(place):
    media = place("00000823.mp4", "00001190.mp4")
    src = FIXTURES / "music-avqa/avqa-test.json"
    rows, summary = imported("music-avqa", src, media / "sft.jsonl", media_dir=media, to="instruction")
    assert summary.fmt == "instruction"
    assert rows[2]["conversations"] == [
        {"role": "user", "content": "Is there a piano in the entire video?" + SHORT_ANSWER + "\n<video>"},
        {"role": "assistant", "content": "yes"},
    ]


def test_avqa_multiple_choice(place):
    media = place("AbCdEfGhIj0_000030.mp4", "KlMnOpQrSt1_000000.mp4", "UvWxYz01234_000250.mp4")
    rows, _ = imported("avqa", FIXTURES / "avqa/val_qa.json", media / "avqa.jsonl", media_dir=media)
    assert [(r["answer"], r["kind"]) for r in rows] == [
        ("dog", "audio-visual/come-from"),
        ("on a stage", "visual/where"),
        ("a speech", "audio/why"),
    ]
    assert rows[0]["choices"] == ["cat", "dog", "fox", "seal"]
    sft, _ = imported(
        "avqa", FIXTURES / "avqa/val_qa.json", media / "avqa-sft.jsonl", media_dir=media, to="instruction"
    )
    assert sft[0]["conversations"][0]["content"] == (
        "What is the source of the barking in the video?\nOptions: cat; dog; fox; seal.\n<video>"
    )
    assert sft[0]["conversations"][1]["content"] == "dog"


def test_trl_standard_rows(place, tmp_path):
    place("clips/beep.mp4")
    src = tmp_path / "media" / "standard.jsonl"
    src.write_text((FIXTURES / "trl-dpo/standard.jsonl").read_text())
    rows, summary = imported("trl-dpo", src, tmp_path / "media" / "dpo.jsonl")
    assert rows[0]["prompt"] == [{"role": "user", "content": "How many beeps do you hear?\n<video>"}]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("Two beeps.", "Five beeps.")
    assert rows[1]["prompt"][0]["content"] == "Is a dog barking?\n<video>"
    assert dict(summary.skipped) == {
        "implicit prompt in plain text (no prompt column)": 1,
        "no media (text-only record)": 1,
    }


def test_trl_conversational_rows(place, tmp_path):
    media = place("clips/beep.mp4")
    rows, summary = imported("trl-dpo", FIXTURES / "trl-dpo/conversational.jsonl", media / "dpo.jsonl", media_dir=media)
    assert rows[0]["prompt"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What do you hear?\n<video>"},
    ]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Is anyone speaking?\n<video>"}]  # implicit prompt
    assert (rows[1]["chosen"], rows[1]["rejected"]) == ("No, nobody speaks.", "Yes, a man speaks.")
    assert dict(summary.skipped) == {"image record (avllm takes video or audio clips)": 1}


def test_llava_hound_pairs_keep_scores_and_skip_frame_folders(place):
    media = place("v_AbCdEfGhIj0.mp4", "v_KlMnOpQrSt1.mp4")
    (media / "frames" / "v_UvWxYz01234").mkdir(parents=True)
    src = FIXTURES / "llava-hound-dpo/sft_dpo_17k.jsonl"
    rows, summary = imported("llava-hound-dpo", src, media / "hound.jsonl", media_dir=media)
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is the woman cooking?\n<video>"}]
    assert (rows[0]["chosen_score"], rows[0]["rejected_score"]) == (5.0, 1.5)
    assert rows[1]["media"] == "v_KlMnOpQrSt1.mp4"
    assert dict(summary.skipped) == {"media is a folder of frames, not a clip": 1}


def conversational_rows() -> list[dict]:
    """TRL conversational pairs as a parquet column set holds them (one schema for every row)."""

    def pair(question: str, chosen: str, rejected: str) -> dict:
        return {
            "video": "clips/beep.mp4",
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    return [
        pair("What do you hear?", "A steady tone.", "A dog barking."),
        pair("<video>\nIs anyone speaking?", "No, nobody speaks.", "Yes, a man speaks."),
    ]


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_hugging_face_folder_of_parquet_splits(place):
    media = place("clips/beep.mp4")
    rows = conversational_rows()
    write_parquet(media / "data" / "train-00000-of-00001.parquet", rows * 3)
    write_parquet(media / "data" / "test-00000-of-00001.parquet", rows[:1])
    train, _ = imported("trl-dpo", media, media / "train.jsonl")
    test, _ = imported("trl-dpo", media, media / "test.jsonl", split="test")
    assert (len(train), len(test)) == (6, 1)
    assert train[1]["prompt"] == [{"role": "user", "content": "Is anyone speaking?\n<video>"}]
    with pytest.raises(DataError, match="has split\\(s\\) test, train|has split\\(s\\) train, test"):
        run_import("trl-dpo", str(media), media / "x.jsonl", split="validation", progress=False)


def test_hugging_face_hub_cache_offline(place, tmp_path, monkeypatch):
    """hf:ORG/NAME reads the dataset's snapshot in the hub cache (a fake cache layout here)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "datasets--lab--av-prefs"
    write_parquet(repo / "snapshots" / "0123abcd" / "data" / "train-00000-of-00001.parquet", conversational_rows())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    media = place("clips/beep.mp4")
    rows, _ = imported("trl-dpo", "hf:lab/av-prefs", media / "dpo.jsonl", media_dir=media)
    assert len(rows) == 2
    with pytest.raises(DataError, match="not in the local Hugging Face cache"):
        run_import("trl-dpo", "hf:lab/absent", media / "x.jsonl", progress=False)


def test_save_to_disk_folder(place):
    import datasets

    media = place("clips/beep.mp4")
    datasets.Dataset.from_list(conversational_rows()).save_to_disk(str(media / "saved"))
    rows, _ = imported("trl-dpo", media / "saved", media / "dpo.jsonl", media_dir=media)
    assert [r["rejected"] for r in rows] == ["A dog barking.", "Yes, a man speaks."]


def test_single_parquet_file(place):
    media = place("clips/beep.mp4")
    write_parquet(media / "pairs.parquet", conversational_rows())
    rows, _ = imported("trl-dpo", media / "pairs.parquet", media / "dpo.jsonl")
    assert [r["chosen"] for r in rows] == ["A steady tone.", "No, nobody speaks."]


def test_layout_problems_are_reported_together_and_nothing_is_written(tmp_path, place):
    media = place("00000823.mp4")
    bad = [
        {"video_id": "00000823", "question_id": 1, "type": "[]", "question_content": "Where is the <Object>?"},
        {
            "video_id": "00000823",
            "question_id": 2,
            "type": "[]",
            "question_content": "Is the <Object> here?",
            "templ_values": "[]",
            "anser": "yes",
        },
        {"video_id": "00000823", "question_id": 3, "type": '["Audio"]', "question_content": "Loud?", "anser": "no"},
        ["not", "an", "object"],
    ]
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(bad))
    out = media / "qa.jsonl"
    with pytest.raises(DataError) as caught:
        run_import("music-avqa", str(src), out, media_dir=str(media), progress=False)
    message = str(caught.value)
    assert "3 problem(s)" in message and "published MUSIC-AVQA JSON" in message
    assert f"{src}[0]: missing field(s) ['anser']" in message
    assert f"{src}[1]: question 'Is the <Object> here?' has 1 slot(s)" in message
    assert f"{src}[3]: must be an object" in message
    assert not out.exists() and not out.with_name("qa.jsonl.partial").exists()


def test_clips_outside_the_output_folder_need_permission(tmp_path, place):
    media = place("00000823.mp4", "00001190.mp4")
    out = tmp_path / "elsewhere" / "qa.jsonl"
    with pytest.raises(DataError, match="--allow-outside-media"):
        run_import("music-avqa", str(FIXTURES / "music-avqa/avqa-test.json"), out, str(media), progress=False)
    rows, _ = imported(
        "music-avqa", FIXTURES / "music-avqa/avqa-test.json", out, media_dir=media, allow_outside_media=True
    )
    assert rows[0]["media"] == str(media / "00000823.mp4")


def test_nothing_importable_is_an_error(tmp_path):
    out = tmp_path / "x.jsonl"
    with pytest.raises(DataError, match="none of its 5 rows could be imported .*3 media file missing"):
        run_import("llava", str(FIXTURES / "llava/videollama2_av.json"), out, progress=False)
    assert not out.exists()


def test_json_list_is_read_element_by_element(tmp_path, monkeypatch):
    """Elements come out before the reader meets the broken end of the file, across buffer edges."""
    monkeypatch.setattr(readers, "CHUNK", 7)
    records = [{"id": i, "text": "x" * (i * 5), "nested": {"list": [1, 2, {"deep": "]"}]}} for i in range(12)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records, indent=2))
    assert [row for _, row in readers.json_rows(path)] == records
    path.write_text(json.dumps(records)[:-40] + "  garbage")
    seen = []
    with pytest.raises(DataError, match="not valid JSON at element"):
        for _, row in readers.json_rows(path):
            seen.append(row)
    assert seen == records[: len(seen)] and len(seen) >= 10


def test_json_lines_problems_name_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": 1}\n\n{broken\n{"b": 2}\n')
    rows = list(readers.json_rows(path))
    assert [where for where, _ in rows] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert "not valid JSON" in str(rows[1][1])


def test_cli_prints_the_summary(capsys, place, audio_only_wav):
    media = place("100001.wav", "YKlMnOpQrSt1.wav", clip=audio_only_wav)
    out = media / "ac.jsonl"
    code = main(["data", "import", "--format", "audiocaps", str(FIXTURES / "audiocaps/val.csv"), "--out", str(out),
                 "--media-dir", str(media)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert f"wrote 2 instruction records to {out} (from 3 source records)" in printed
    assert "1 media file missing (e.g. 100003)" in printed


def test_cli_bad_input_exits_2(capsys, tmp_path):
    code = main(
        ["data", "import", "--format", "clotho", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.jsonl")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("avllm: error: ") and "no such file or folder" in err
    code = main(["data", "import", "--format", "clotho", str(FIXTURES / "clotho/clotho_captions_evaluation.csv"),
                 "--out", str(tmp_path / "o.jsonl"), "--to", "qa"])  # fmt: skip
    assert code == 2 and "clotho imports as instruction" in capsys.readouterr().err
