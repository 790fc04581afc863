import pytest
from factories import tiny_llm_folder

from avllm.errors import SpliceError
from avllm.prompt import IGNORE_INDEX, VIDEO_TOKEN, add_video_token, encode_chat, expand_placeholders, with_video


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm_folder(tmp_path_factory.mktemp("llm")))
    add_video_token(tok)
    return tok


def conversation():
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": with_video("What is here?")},
        {"role": "assistant", "content": "A dog."},
        {"role": "user", "content": "And the sound?"},
        {"role": "assistant", "content": "It barks."},
    ]


def test_video_token_added_once(tokenizer):
    first = add_video_token(tokenizer)
    assert add_video_token(tokenizer) == first
    assert tokenizer.convert_ids_to_tokens(first) == VIDEO_TOKEN


def test_labels_cover_exactly_the_assistant_turns(tokenizer):
    tokens = encode_chat(tokenizer, conversation())
    labelled = [t for t, lab in zip(tokens.input_ids, tokens.labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "A dog.<|im_end|>\nIt barks.<|im_end|>\n"
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(tokens.input_ids, tokens.labels))


def test_generation_prompt_has_no_labels(tokenizer):
    tokens = encode_chat(tokenizer, conversation()[:2], add_generation_prompt=True)
    assert set(tokens.labels) == {IGNORE_INDEX}
    assert tokenizer.decode(tokens.input_ids).endswith("<|im_start|>assistant\n")


def test_a_generation_prompt_renders_a_long_history_once(tokenizer, monkeypatch):
    """A served conversation with 1,000 earlier turns costs one template render, not one per answer."""
    history = [{"role": "user" if i % 2 else "assistant", "content": f"turn {i}"} for i in range(1000)]
    history[1]["content"] = with_video(history[1]["content"])  # the greeting comes first, then the clip
    renders = []
    real = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **k: renders.append(1) or real(*a, **k))
    tokens = encode_chat(tokenizer, [*history, {"role": "user", "content": "and now?"}], add_generation_prompt=True)
    assert len(renders) == 1 and set(tokens.labels) == {IGNORE_INDEX}
    assert tokenizer.decode(tokens.input_ids).startswith("<|im_start|>")


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "no placeholder"}],
        [{"role": "user", "content": "<video> <video> two"}],
        [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": "<video> late"},
        ],
        [{"role": "robot", "content": "<video>"}],
        [],
    ],
)
def test_bad_conversations_are_refused(tokenizer, messages):
    with pytest.raises(SpliceError):
        encode_chat(tokenizer, messages)


def test_expand_replaces_the_placeholder_with_the_layout(tokenizer):
    vid = add_video_token(tokenizer)
    tokens = encode_chat(tokenizer, conversation())
    layout = [vid, vid, 7, vid]
    out = expand_placeholders(tokens, vid, [layout])
    pos = tokens.input_ids.index(vid)
    assert out.input_ids[pos : pos + 4] == layout
    assert out.input_ids[:pos] == tokens.input_ids[:pos] and out.input_ids[pos + 4 :] == tokens.input_ids[pos + 1 :]
    assert out.labels[pos : pos + 4] == [IGNORE_INDEX] * 4
    assert len(out.labels) == len(out.input_ids)


def test_expand_refuses_a_count_mismatch(tokenizer):
    vid = add_video_token(tokenizer)
    tokens = encode_chat(tokenizer, conversation())
    with pytest.raises(SpliceError, match="1 <video> placeholder"):
        expand_placeholders(tokens, vid, [[vid], [vid]])


def test_the_clip_goes_after_the_question_unless_the_user_placed_it():
    assert with_video("What colour?\nOptions: red; blue.") == f"What colour?\nOptions: red; blue.\n{VIDEO_TOKEN}"
    assert with_video(f"{VIDEO_TOKEN} first, then: what?") == f"{VIDEO_TOKEN} first, then: what?"
