import json

import pytest

from higgs_train.data.manifest import DEFAULT_SYSTEM_PROMPT, load_manifest
from higgs_train.errors import ManifestError


def write(tmp_path, rows, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_plain_row_resolves_relative_paths_and_alias(tmp_path):
    path = write(
        tmp_path, [{"audio_filepath": "a.wav", "text": " hi "}, {"audio": "/abs/b.wav", "text": "yo", "speaker": "s1"}]
    )
    first, second = load_manifest(path)
    assert first.target_audio == str(tmp_path / "a.wav")
    assert [(t.role, t.text) for t in first.turns[:2]] == [("system", DEFAULT_SYSTEM_PROMPT), ("user", "hi")]
    assert second.target_audio == "/abs/b.wav" and second.speaker == "s1"
    assert first.source == f"{path}:1"


def test_voice_cloning_row_puts_reference_first(tmp_path):
    path = write(
        tmp_path, [{"audio_filepath": "t.wav", "text": "target", "ref_audio_filepath": "r.wav", "ref_text": "ref"}]
    )
    (sample,) = load_manifest(path)
    assert sample.audio_paths == (str(tmp_path / "r.wav"), str(tmp_path / "t.wav"))
    assert [t.role for t in sample.turns] == ["system", "user", "assistant", "user", "assistant"]


def test_chatml_row_last_assistant_audio_is_target(tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "Speak."},
            {"role": "user", "content": [{"type": "text", "text": "ref words"}]},
            {"role": "assistant", "content": [{"type": "audio", "audio_url": "ref.wav"}]},
            {"role": "user", "content": "target words"},
            {"role": "assistant", "content": [{"type": "audio", "audio_url": "sub/tgt.wav"}]},
        ]
    }
    (sample,) = load_manifest(write(tmp_path, [row]))
    assert sample.target_audio == str(tmp_path / "sub" / "tgt.wav")
    assert sample.turns[0].text == "Speak."


def test_json_array_manifest(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"audio": "a.wav", "text": "x"}], indent=2))
    assert len(load_manifest(path)) == 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (['{"audio": "a.wav", "text": "x"}', "{not json"], "m.jsonl:2: not valid JSON"),
        (
            [{"audio_filepath": "a.wav"}],
            'm.jsonl:1: missing "text"; every row needs a "text" field with the transcript',
        ),
        ([{"text": "hello"}], 'm.jsonl:1: missing "audio_filepath"; give the path of the audio file'),
        ([{"audio": "a.wav", "text": "  "}], 'm.jsonl:1: field "text" is empty; give the transcript of the clip'),
        ([{"messages": [{"role": "user", "content": "hi"}]}], 'm.jsonl:1: field "messages" has no assistant audio'),
        ([{"messages": [{"role": "bot", "content": "hi"}]}], 'm.jsonl:1: field "messages[0].role" must be one of'),
        (["[1, 2]"], "m.jsonl:1: a row must be a JSON object, got list"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, message):
    path = write(tmp_path, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found; pass an existing .jsonl or .json file"):
        load_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="the manifest has no rows"):
        load_manifest(tmp_path / "empty.jsonl")


def test_chatml_one_clip_per_assistant_message_and_trimmed_strings(tmp_path):
    two = {"role": "assistant", "content": [{"type": "audio", "path": "a.wav"}, {"type": "audio", "path": "b.wav"}]}
    user = {"role": "user", "content": "  say this  "}
    with pytest.raises(ManifestError) as e:
        load_manifest(write(tmp_path, [{"messages": [user, two]}]))
    assert str(e.value) == (
        f'{tmp_path / "m.jsonl"}:1: field "messages[1].content" must hold exactly one audio item (the released chat '
        "template renders one clip per assistant message); put each clip in its own assistant message"
    )
    spoken = {"role": "assistant", "content": "hello"}
    with pytest.raises(ManifestError, match=r'field "messages\[1\].content" is text; an assistant message holds one'):
        load_manifest(write(tmp_path, [{"messages": [user, spoken]}]))
    one = {"role": "assistant", "content": [{"type": "audio", "path": "a.wav"}]}
    (sample,) = load_manifest(write(tmp_path, [{"messages": [{"role": "system", "content": " sys "}, user, one]}]))
    assert [t.text for t in sample.turns if t.text] == ["sys", "say this"]
