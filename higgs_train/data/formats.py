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
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
TRANSCRIPT_SUFFIXES = (".txt", ".lab")
TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")

Row = tuple[str, object, Path]  # (where, row dict or a ManifestError for an unreadable row, base folder)


def detect_format(path: Path) -> str:
    """The format of a manifest path, from what is in it (see config.FORMATS)."""
    if path.is_dir():
        if (path / "metadata.json").is_file():
            return "folder"
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "hf"
        if (path / "metadata.csv").is_file():
            return "ljspeech"
        if any(p.suffix.lower() in AUDIO_SUFFIXES for p in path.iterdir()):
            return "pairs"
        raise ManifestError(
            f"{path}: not a manifest folder: expected metadata.json, a saved dataset, an LJSpeech metadata.csv or "
            "audio files with .txt/.lab transcripts beside them",
            "unreadable manifest",
        )
    if path.suffix.lower() in (".csv", ".tsv", ".txt", ".psv"):
        return "csv"
    return "json" if path.suffix == ".json" else "jsonl"


def iter_rows(path: str | Path, fmt: str = "auto") -> Iterator[Row]:
    """Rows of any supported manifest format (`fmt` one of config.FORMATS; auto detects it).

    Raises:
        ManifestError: the path is missing, of no known format, or unreadable as a whole.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(
            f"{path}: manifest not found; pass an existing .jsonl or .json file to --train_manifest", "no manifest"
        )
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {
        "folder": _folder_rows,
        "hf": _dataset_rows,
        "ljspeech": _ljspeech_rows,
        "pairs": _pair_rows,
        "csv": _csv_rows,
    }
    if fmt in readers:
        yield from readers[fmt](path)
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e}); it must be UTF-8 text", "no manifest") from e
    if fmt == "json" and text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
    else:
        yield from _jsonl_rows(path, text)


def _ljspeech_rows(folder: Path) -> Iterator[Row]:
    """LJSpeech: metadata.csv lines `id|text` or `id|text|normalized` (no header), audio in wavs/ID.wav."""
    meta = folder / "metadata.csv"
    for line_no, line in enumerate(meta.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta}:{line_no}"
        fields = line.split("|")
        if len(fields) < 2:
            message = f"{where}: expected `id|text` or `id|text|normalized`, got {line[:60]!r}"
            yield where, ManifestError(message, "invalid row"), folder
            continue
        text = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
        yield where, {"audio_filepath": f"wavs/{fields[0].strip()}.wav", "text": text}, folder


def _csv_rows(path: Path) -> Iterator[Row]:
    """`audio_file|text` lines (a header line naming those columns is skipped); paths relative to the file."""
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        audio, sep, text = line.partition("|")
        if line_no == 1 and audio.strip().lower() in ("audio_file", "audio", "path", "audio_filepath"):
            continue
        if not sep:
            yield (
                where,
                ManifestError(f"{where}: expected `audio_file|text`, got {line[:60]!r}", "invalid row"),
                path.parent,
            )
            continue
        yield where, {"audio_filepath": audio.strip(), "text": text}, path.parent


def _pair_rows(folder: Path) -> Iterator[Row]:
    """NAME.wav (or .flac, .ogg, .mp3) with NAME.txt or NAME.lab beside it; an audio file without one is an error."""
    for audio in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        where = str(audio)
        transcript = next((audio.with_suffix(s) for s in TRANSCRIPT_SUFFIXES if audio.with_suffix(s).is_file()), None)
        if transcript is None:
            message = f"{where}: no {audio.stem}.txt or {audio.stem}.lab beside it; add the transcript"
            yield where, ManifestError(message, "missing transcript"), folder
            continue
        yield where, {"audio_filepath": str(audio), "text": transcript.read_text(encoding="utf-8-sig")}, folder


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
        samples = json.loads(meta_path.read_text(encoding="utf-8-sig"))["samples"]
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
                row["text"] = (folder / item["transcript_file"]).read_text(encoding="utf-8-sig")
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
