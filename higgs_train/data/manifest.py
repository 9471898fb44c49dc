"""Manifest parsing and validation: every row becomes one `Sample`, a conversation whose last audio is the target.

Rows are parsed line by line (not by `datasets.load_dataset("json")`, whose schema inference fails on a manifest
that mixes row forms and whose errors carry no line numbers), so every error names the file, line and field.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from higgs_train.data.formats import EMBEDDED, Columns, iter_rows
from higgs_train.errors import ManifestError
from higgs_train.language import ISO_639_1

DEFAULT_SYSTEM_PROMPT = "Generate audio following instruction."
ROLES = ("system", "scene", "user", "assistant")


class Turn(NamedTuple):  # a tuple, not a dataclass: a start builds five of them per row of the manifest
    """One message of a conversation: text, or one audio clip (absolute path)."""

    role: str
    text: str | None = None
    audio: str | None = None


@dataclass(frozen=True)
class Sample:
    """One training row. `turns` is the conversation; the last audio turn is the target, earlier audio is context."""

    source: str  # "manifest.jsonl:17", for error messages and reports
    turns: tuple[Turn, ...]
    speaker: str | None = None
    language: str | None = None  # ISO 639-1: the row's own field, else the run's one --language
    # derived once per row from `turns` (every stage asks; frozen, so they cannot go stale)
    audio_paths: tuple[str, ...] = field(init=False, repr=False, compare=False)
    target_text: str | None = field(init=False, repr=False, compare=False)  # the last user text before the target

    def __post_init__(self) -> None:
        paths, text, target_text = [], None, None
        for turn in self.turns:
            if turn.audio is not None:
                paths.append(turn.audio)
                target_text = text
            elif turn.role == "user" and turn.text:
                text = turn.text
        object.__setattr__(self, "audio_paths", tuple(paths))
        object.__setattr__(self, "target_text", target_text)

    @property
    def target_audio(self) -> str:
        return self.audio_paths[-1]


@dataclass(frozen=True)
class Problem:
    """A row that cannot be trained on: where, a short reason for the report, and the full message."""

    where: str
    reason: str
    message: str


def load_manifest(
    path: str | Path,
    problems: list[Problem] | None = None,
    fmt: str = "auto",
    columns: Columns = Columns(),
    languages: tuple[str, ...] = (),
) -> list[Sample]:
    """Read a manifest of any supported format (see `formats.py`).

    Args:
        path: any format of formats.py (a file, a folder, hf://OWNER/NAME[:SPLIT]); relative audio paths
            resolve against the manifest's folder.
        problems: when given, bad rows are appended to it and skipped; when None, the first bad row raises.
        languages: the run's --language codes: a row without a `language` field takes the one code when there is
            one; a row naming another language than these is a bad row.

    Returns:
        One `Sample` per good row, in order.

    Raises:
        ManifestError: the manifest cannot be read or has no rows, or (without `problems`) a row is malformed;
            the message names file, line and field.
    """
    samples = []
    for where, row, base in iter_rows(path, fmt, columns):
        try:
            if isinstance(row, ManifestError):
                raise row
            samples.append(with_language(parse_row(row, where, base), languages))
        except ManifestError as e:
            if problems is None:
                raise
            problems.append(Problem(where, e.reason, str(e)))
    if not samples and not problems:
        raise ManifestError(f"{path}: the manifest has no rows; add one JSON object per line", "no manifest")
    return samples


def with_language(sample: Sample, languages: tuple[str, ...]) -> Sample:
    if sample.language is None:
        return dataclasses.replace(sample, language=languages[0]) if len(languages) == 1 else sample
    if languages and sample.language not in languages:
        raise ManifestError(
            f'{sample.source}: field "language" is {sample.language!r}, not one of --language {",".join(languages)}; '
            "add it to --language or fix the row",
            "language not in --language",
        )
    return sample


def _language(row: dict, where: str) -> str | None:
    value = _optional_str(row, "language", where)
    if value is None or not value.strip():
        return None
    code = value.strip().lower().replace("_", "-").split("-")[0]  # a locale (ar-EG, pt_BR) names its language
    if code not in ISO_639_1:
        raise ManifestError(
            f'{where}: field "language" is {value!r}, not an ISO 639-1 code; use a two-letter code such as en, ar, zh',
            "invalid language",
        )
    return code


def parse_row(row: object, where: str, base_dir: Path) -> Sample:
    """Turn one manifest row (any of the three forms) into a `Sample`.

    Args:
        row: the decoded JSON value.
        where: "file:line" for error messages.
        base_dir: the folder that relative audio paths resolve against.

    Raises:
        ManifestError: the row is not an object, or a field is missing, empty or of the wrong type.
    """
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        return _chatml_sample(row, where, base_dir)
    speaker = _optional_str(row, "speaker", where)
    turns = [Turn("system", text=_optional_str(row, "system", where) or DEFAULT_SYSTEM_PROMPT)]
    if scene := _optional_str(row, "scene", where):
        turns.append(Turn("scene", text=scene))
    if "ref_audio_filepath" in row or "ref_text" in row:
        turns.append(Turn("user", text=_required_text(row, "ref_text", where)))
        turns.append(Turn("assistant", audio=_audio_path(row, ("ref_audio_filepath",), where, base_dir)))
    turns.append(Turn("user", text=_required_text(row, "text", where)))
    turns.append(Turn("assistant", audio=_audio_path(row, ("audio_filepath", "audio"), where, base_dir)))
    return Sample(where, tuple(turns), speaker, _language(row, where))


def _chatml_sample(row: dict, where: str, base_dir: Path) -> Sample:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ManifestError(f'{where}: field "messages" must be a non-empty list of {{"role", "content"}} objects')
    turns: list[Turn] = []
    for i, msg in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise ManifestError(f'{where}: field "{field}.role" must be one of {", ".join(ROLES)}')
        turns.extend(_content_turns(msg["role"], msg.get("content"), f"{field}.content", where, base_dir))
    audio_roles = [t.role for t in turns if t.audio is not None]
    if not audio_roles or audio_roles[-1] != "assistant":
        raise ManifestError(
            f'{where}: field "messages" has no assistant audio; the last assistant audio is the training target'
        )
    if "user" in audio_roles:
        raise ManifestError(f"{where}: audio in a user turn is not supported; put context audio in assistant turns")
    if not any(t.role == "system" for t in turns):
        turns.insert(0, Turn("system", text=DEFAULT_SYSTEM_PROMPT))
    return Sample(where, tuple(turns), _optional_str(row, "speaker", where), _language(row, where))


def _content_turns(role: str, content: object, field: str, where: str, base_dir: Path) -> list[Turn]:
    if isinstance(content, str):
        if not content.strip():
            raise ManifestError(f'{where}: field "{field}" is empty; give the text of the turn')
        if role == "assistant":
            raise ManifestError(f'{where}: field "{field}" is text; an assistant message holds one audio clip')
        return [Turn(role, text=content.strip())]  # the released template trims string content too
    if not isinstance(content, list) or not content:
        raise ManifestError(f'{where}: field "{field}" must be a string or a list of text/audio items')
    turns = []
    for j, item in enumerate(content):
        item_field = f"{field}[{j}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            turns.append(Turn(role, text=_required_text(item, "text", where, prefix=f"{item_field}.")))
        elif kind == "audio":
            keys = ("audio_url", "url", "path", "audio")
            turns.append(Turn(role, audio=_audio_path(item, keys, where, base_dir, prefix=f"{item_field}.")))
        else:
            raise ManifestError(f'{where}: field "{item_field}.type" must be "text" or "audio"')
    if role == "assistant" and (len(turns) != 1 or turns[0].audio is None):
        raise ManifestError(
            f'{where}: field "{field}" must hold exactly one audio item (the released chat template renders one '
            "clip per assistant message); put each clip in its own assistant message"
        )
    return turns


def _optional_str(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f'{where}: field "{key}" must be a string, got {type(value).__name__}')
    return value


def _required_text(row: dict, key: str, where: str, prefix: str = "") -> str:
    if key not in row:
        raise ManifestError(
            f'{where}: missing "{prefix}{key}"; every row needs a "{key}" field with the transcript', "missing field"
        )
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f'{where}: field "{prefix}{key}" is empty; give the transcript of the clip', "empty text")
    return value.strip()


def _audio_path(row: dict, keys: tuple[str, ...], where: str, base_dir: Path, prefix: str = "") -> str:
    key = next((k for k in keys if k in row), None)
    if key is None:
        raise ManifestError(f'{where}: missing "{prefix}{keys[0]}"; give the path of the audio file', "missing field")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f'{where}: field "{prefix}{key}" must be a non-empty path to an audio file')
    if value.startswith(EMBEDDED):
        return value
    # normalised, not resolved: a symlink loop is a bad row found when the clip is read, not a crash here
    return os.path.normpath(os.path.join(_absolute(str(base_dir)), value))


@functools.lru_cache(maxsize=64)
def _absolute(base_dir: str) -> str:
    return os.path.abspath(base_dir)
