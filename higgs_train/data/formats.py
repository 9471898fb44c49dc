"""Where rows come from: a JSONL / JSON-array manifest, a community folder with `metadata.json`, or a Hugging Face
dataset saved with `datasets.save_to_disk` (an Audio column and a text column). Every row comes with "where"
(file:line or folder:sample) for error messages, and the folder its relative paths resolve against.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from higgs_train.errors import ManifestError

EMBEDDED = "hfds:"  # audio held inside a saved dataset: "hfds:DIR::ROW::COLUMN"
TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")

Row = tuple[str, object, Path]  # (where, row dict or a ManifestError for an unreadable row, base folder)


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Rows of any supported manifest format.

    Raises:
        ManifestError: the path is missing, of no known format, or unreadable as a whole.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "metadata.json").is_file():
            yield from _folder_rows(path)
        elif (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            yield from _dataset_rows(path)
        else:
            raise ManifestError(
                f"{path}: a folder manifest needs a metadata.json or a dataset saved with datasets.save_to_disk",
                "unreadable manifest",
            )
        return
    if not path.is_file():
        raise ManifestError(
            f"{path}: manifest not found; pass an existing .jsonl or .json file to --train_manifest", "no manifest"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e}); it must be UTF-8 text", "no manifest") from e
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
    else:
        yield from _jsonl_rows(path, text)


def _jsonl_rows(path: Path, text: str) -> Iterator[Row]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{line_no}", json.loads(line), path.parent
        except json.JSONDecodeError as e:
            message = (
                f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            )
            yield f"{path}:{line_no}", ManifestError(message, "invalid JSON"), path.parent


def _json_array_rows(path: Path, text: str) -> Iterator[Row]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})", "invalid JSON") from e
    if not isinstance(rows, list):
        raise ManifestError(f"{path}: a .json manifest must be an array of row objects", "invalid JSON")
    for i, row in enumerate(rows):  # rows of a pretty-printed array span many lines: name the index
        yield f"{path}:row {i}", row, path.parent


def _folder_rows(folder: Path) -> Iterator[Row]:
    """The community trainers' folder: metadata.json {"samples": [{"audio_file", "transcript_file", ...}]}."""
    meta_path = folder / "metadata.json"
    try:
        samples = json.loads(meta_path.read_text(encoding="utf-8"))["samples"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f'{meta_path}: cannot read {{"samples": [...]}} ({e})', "unreadable manifest") from e
    for i, item in enumerate(samples):
        where = f"{meta_path}:samples[{i}]" + (f" (id {item.get('id')})" if isinstance(item, dict) else "")
        if not isinstance(item, dict):
            yield where, ManifestError(f"{where}: a sample must be a JSON object", "invalid row"), folder
            continue
        row = {"audio_filepath": item.get("audio_file"), "speaker": item.get("speaker_id"), "scene": item.get("scene")}
        if "transcript" in item:
            row["text"] = item["transcript"]
        elif "transcript_file" in item:
            try:
                row["text"] = (folder / item["transcript_file"]).read_text(encoding="utf-8")
            except (OSError, TypeError, UnicodeDecodeError) as e:
                message = f'{where}: cannot read "transcript_file" {item["transcript_file"]!r} ({e})'
                yield where, ManifestError(message, "missing transcript"), folder
                continue
        if item.get("ref_audio_file"):
            row["ref_audio_filepath"] = item["ref_audio_file"]
            row["ref_text"] = item.get("ref_transcript")
        yield where, {k: v for k, v in row.items() if v is not None}, folder


def _dataset_rows(folder: Path) -> Iterator[Row]:
    """A dataset saved with `datasets`: the Audio column stays undecoded here (bytes are read at encoding)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # datasets raises several types for a folder it cannot read
        raise ManifestError(f"{folder}: cannot load the saved dataset ({e})", "unreadable manifest") from e
    if isinstance(ds, datasets.DatasetDict):
        raise ManifestError(
            f"{folder}: a DatasetDict; pass one split's folder, e.g. {folder}/train", "unreadable manifest"
        )
    audio_cols = [name for name, f in ds.features.items() if isinstance(f, datasets.Audio)]
    text_cols = [name for name in TEXT_COLUMNS if name in ds.features]
    if not audio_cols or not text_cols:
        raise ManifestError(
            f"{folder}: the dataset needs an Audio column and a text column ({', '.join(TEXT_COLUMNS)}); "
            f"it has {', '.join(ds.features)}",
            "unreadable manifest",
        )
    audio_col, text_col = audio_cols[0], text_cols[0]
    plain = ds.cast_column(audio_col, datasets.Audio(decode=False))
    speaker_col = next((c for c in ("speaker", "speaker_id") if c in ds.features), None)
    for i, item in enumerate(plain.select_columns([c for c in (audio_col, text_col, speaker_col) if c])):
        audio = item[audio_col] or {}
        source = f"{EMBEDDED}{folder.resolve()}::{i}::{audio_col}" if audio.get("bytes") else audio.get("path")
        row = {"audio_filepath": source, "text": item[text_col]}
        if speaker_col and item.get(speaker_col) is not None:
            row["speaker"] = str(item[speaker_col])
        yield f"{folder}:row {i}", row, folder
