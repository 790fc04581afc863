"""Data at scale: a recipe's mix (files sampled by weight, seeded, all checked first) and feature shards."""

import json

import pytest
from test_train import dataset_dir  # noqa: F401

from avllm.config import DataSource, TrainConfig, from_dict
from avllm.data import formats
from avllm.data.cache import shard
from avllm.data.mix import load_mix
from avllm.errors import ConfigError, DataError


def test_weights_take_whole_copies_and_a_seeded_share(dataset_dir):  # noqa: F811
    data = str(dataset_dir / "train.jsonl")
    mix = [DataSource(data, 2.0), DataSource(data, 0.5)]
    records = load_mix(mix, "instruction", seed=0)
    ids = [r.id for r in records]  # read from disk one by one: the mix holds references only
    assert len(records) == 4 * 2 + 2 and records.files[0].offsets.itemsize * len(records.files[0]) == 32
    assert sorted(ids[:8]) == sorted(["r0", "r1", "r2", "r3"] * 2)
    assert len(set(ids[8:])) == 2  # drawn without replacement
    assert records[0].conversations[1]["content"] == "A low tone." and records[0].media == dataset_dir / "clip0.mp4"
    assert [r.id for r in load_mix(mix, "instruction", seed=0)] == ids  # resumable
    draws = {tuple(r.id for r in load_mix(mix, "instruction", seed=s))[8:] for s in range(8)}
    assert len(draws) > 1  # the seed chooses the share


def test_every_file_is_checked_before_any_is_used(dataset_dir, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "media": "clip0.mp4", "conversations": []}) + "\n")
    worse = tmp_path / "worse.jsonl"
    worse.write_text("not json\n")
    with pytest.raises(DataError) as err:
        load_mix(
            [DataSource(str(bad)), DataSource(str(dataset_dir / "train.jsonl")), DataSource(str(worse))],
            "instruction",
            0,
        )
    assert f"{bad}: " in str(err.value) and f"{worse}:1: (line): not valid JSON" in str(err.value)


def test_recipe_data_is_one_file_or_a_weighted_list():
    assert from_dict(TrainConfig, {"data": "a.jsonl"}).sources() == [DataSource("a.jsonl", 1.0)]
    mix = from_dict(TrainConfig, {"data": [{"path": "a.jsonl", "weight": 3}, {"path": "b.jsonl"}]})
    assert mix.sources() == [DataSource("a.jsonl", 3), DataSource("b.jsonl", 1.0)]
    with pytest.raises(ConfigError, match=r"data\[0\].weight: 0 is out of range; it must be above 0"):
        from_dict(TrainConfig, {"data": [{"path": "a.jsonl", "weight": 0}]})
    with pytest.raises(ConfigError, match="data: 3 is not text; 3 is not a list"):
        from_dict(TrainConfig, {"data": 3})


def test_shards_split_the_distinct_clips_without_overlap(monkeypatch, tmp_path):
    clips = [tmp_path / f"c{i}.mp4" for i in (3, 1, 4, 1, 5, 9, 2, 6)]  # c1 twice
    parts = [shard(clips, f"{i}/3") for i in range(3)]
    assert [(index, count) for _, index, count in parts] == [(0, 3), (1, 3), (2, 3)]
    taken = [clip for part, _, _ in parts for clip in part]
    assert sorted(taken) == sorted(set(clips)) and len(taken) == 7
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shard(clips) == parts[1]  # auto: what accelerate launch and torchrun set
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert shard(clips) == (sorted(set(clips)), 0, 1)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError, match=f"--shard {bad}: expected auto or I/N"):
            shard(clips, bad)


def test_streaming_index_reads_back_only_good_records_and_lists_every_problem(dataset_dir, tmp_path):  # noqa: F811
    lines = (dataset_dir / "train.jsonl").read_text().splitlines()
    broken = json.loads(lines[1])
    broken["conversations"] = [{"role": "assistant", "content": "no video"}]
    rows = [lines[0], "{oops", json.dumps(broken), lines[0], "[1]", "", json.dumps({"id": "m", "media": "gone.mp4"})]
    path = dataset_dir / "mixed-bag.jsonl"
    path.write_text("\n".join(rows) + "\n")
    indexed, problems = formats.index(path, "instruction")
    first = json.loads(lines[0])
    assert [(r.id, r.line, r.media) for r in indexed] == [(first["id"], 1, dataset_dir / first["media"])]
    assert sorted({p.line for p in problems}) == [2, 3, 4, 5, 7]  # bad JSON, bad turns, duplicate id, not an object
    assert any(p.line == 7 and "not found" in p.message for p in problems)  # and the missing clip
