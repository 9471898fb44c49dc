"""Where rows come from: a JSONL / JSON-array manifest, a community folder with `metadata.json`, LJSpeech, CSV,
audio/transcript pairs, or a Hugging Face dataset: saved with `datasets.save_to_disk`, parquet shards as a hub
download leaves them (`data/train-*.parquet`), or `hf://OWNER/NAME[:SPLIT]` through `datasets.load_dataset` (a
cached copy works offline). Every row comes with "where" (file:line or folder:sample) for error messages, and the
folder its relative paths resolve against.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from higgs_train.errors import ManifestError

EMBEDDED = "hfds:"  # audio held inside a dataset: "hfds:SPEC::ROW::COLUMN" (SPEC: see open_dataset)
HUB = "hf://"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
TRANSCRIPT_SUFFIXES = (".txt", ".lab")
TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")
AUDIO_COLUMNS = ("audio", "audio_filepath", "audio_file", "path", "file")  # when no column has the Audio type
SPEAKER_COLUMNS = ("speaker", "speaker_id")
LANGUAGE_COLUMNS = ("language", "lang", "locale")
_HUB_NAME = re.compile(r"hf://([\w.-]+/[\w.-]+)(?::([\w.-]+))?")


class Columns(NamedTuple):
    """--text_column / --audio_column for dataset formats; None: found by type or by the usual names."""

    text: str | None = None
    audio: str | None = None


Row = tuple[str, object, Path]  # (where, row dict or a ManifestError for an unreadable row, base folder)


def detect_format(path: Path | str) -> str:
    """The format of a manifest path, from what is in it (see config.FORMATS)."""
    if str(path).startswith(HUB):
        return "hub"
    path = Path(path)
    if path.is_dir():
        if (path / "metadata.json").is_file():
            return "folder"
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "hf"
        if (path / "metadata.csv").is_file():
            return "ljspeech"
        if parquet_files(path):
            return "parquet"
        if any(p.suffix.lower() in AUDIO_SUFFIXES for p in path.iterdir()):
            return "pairs"
        raise ManifestError(
            f"{path}: not a manifest folder: expected metadata.json, a saved dataset, an LJSpeech metadata.csv or "
            "audio files with .txt/.lab transcripts beside them",
            "unreadable manifest",
        )
    if path.suffix.lower() in (".csv", ".tsv", ".txt", ".psv"):
        return "csv"
    if path.suffix.lower() == ".parquet":
        return "parquet"
    return "json" if path.suffix == ".json" else "jsonl"


def iter_rows(path: str | Path, fmt: str = "auto", columns: Columns = Columns()) -> Iterator[Row]:
    """Rows of any supported manifest format (`fmt` one of config.FORMATS; auto detects it).

    Raises:
        ManifestError: the path is missing, of no known format, or unreadable as a whole.
    """
    if str(path).startswith(HUB) or fmt == "hub":
        yield from _table_rows(hub_spec(str(path)), str(path), Path.cwd(), columns)
        return
    path = Path(path)
    if not path.exists():
        raise ManifestError(
            f"{path}: manifest not found; pass an existing .jsonl or .json file to --train_manifest", "no manifest"
        )
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hf":
        yield from _table_rows(str(path.resolve()), str(path), path, columns)
        return
    if fmt == "parquet":
        yield from _table_rows(f"parquet={path.resolve()}", str(path), path if path.is_dir() else path.parent, columns)
        return
    readers = {
        "folder": _folder_rows,
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
    """`audio_file|text` lines, or `audio_file|text|language` under a header line naming those columns (a header is
    skipped); paths relative to the file."""
    with_language = False
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        audio, sep, text = line.partition("|")
        if line_no == 1 and audio.strip().lower() in ("audio_file", "audio", "path", "audio_filepath"):
            with_language = line.rpartition("|")[2].strip().lower() in LANGUAGE_COLUMNS
            continue
        if not sep:
            yield (
                where,
                ManifestError(f"{where}: expected `audio_file|text`, got {line[:60]!r}", "invalid row"),
                path.parent,
            )
            continue
        row = {"audio_filepath": audio.strip(), "text": text}
        if with_language:
            row["text"], _, row["language"] = text.rpartition("|")
        yield where, row, path.parent


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
    name, base = str(path), path.parent  # once, not per row: a start reads every line of a 1M-row manifest
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{line_no}", json.loads(line), base
        except json.JSONDecodeError as e:
            message = (
                f"{name}:{line_no}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            )
            yield f"{name}:{line_no}", ManifestError(message, "invalid JSON"), base
        except RecursionError:
            message = f"{name}:{line_no}: the row nests too deeply to read; a row is one flat JSON object"
            yield f"{name}:{line_no}", ManifestError(message, "invalid JSON"), base


def _json_array_rows(path: Path, text: str) -> Iterator[Row]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})", "invalid JSON") from e
    except RecursionError as e:
        raise ManifestError(
            f"{path}: nests too deeply to read; give an array of flat row objects", "invalid JSON"
        ) from e
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
        row["language"] = item.get("language")
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


def hub_spec(value: str) -> str:
    """The open_dataset spec of an `hf://OWNER/NAME[:SPLIT]` manifest (split: train by default).

    Raises:
        ManifestError: not of that form.
    """
    match = _HUB_NAME.fullmatch(value)
    if not match:
        raise ManifestError(
            f"{value}: a hub dataset is hf://OWNER/NAME or hf://OWNER/NAME:SPLIT, e.g. hf://someone/voices:train",
            "no manifest",
        )
    return f"hub={match.group(1)}:{match.group(2) or 'train'}"


def parquet_files(path: Path) -> list[Path]:
    """A file, or a folder's parquet shards as a hub download leaves them (top level or data/): the train-* shards
    when the folder holds several splits."""
    if path.is_file():
        return [path]
    shards = sorted([*path.glob("*.parquet"), *path.glob("data/*.parquet")])
    return [p for p in shards if p.name.startswith("train")] or shards


@functools.lru_cache(maxsize=4)
def open_dataset(spec: str):
    """A `datasets.Dataset` from a spec: a folder saved with save_to_disk, `parquet=PATH` (a file or a folder of
    shards) or `hub=OWNER/NAME:SPLIT` (through load_dataset: the local cache when offline)."""
    import datasets

    if spec.startswith("parquet="):
        files = [str(p) for p in parquet_files(Path(spec[len("parquet=") :]))]
        return datasets.load_dataset("parquet", data_files={"train": files}, split="train")
    if spec.startswith("hub="):
        name, _, split = spec[len("hub=") :].rpartition(":")
        return datasets.load_dataset(name, split=split)
    return datasets.load_from_disk(spec)


@functools.lru_cache(maxsize=4)
def undecoded(spec: str, column: str):
    """The dataset with `column` as {"bytes", "path"} (never decoded by datasets: soundfile decodes it later)."""
    import datasets

    ds = open_dataset(spec)
    if isinstance(ds.features.get(column), datasets.Audio):
        ds = ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def _table_rows(spec: str, label: str, base: Path, columns: Columns) -> Iterator[Row]:
    """Rows of a dataset: the audio column (Audio-typed, a {bytes, path} struct, or paths) and a text column."""
    import datasets

    try:
        ds = open_dataset(spec)
    except Exception as e:  # datasets raises many types for a source it cannot read
        hint = ""
        if spec.startswith("hub="):
            hint = "; without network it must be in the local datasets cache (load it once where there is network)"
        message = f"{label}: cannot load the dataset ({type(e).__name__}: {e}){hint}"
        raise ManifestError(message, "unreadable manifest") from e
    if isinstance(ds, datasets.DatasetDict):
        message = f"{label}: a DatasetDict; pass one split's folder, e.g. {label}/train"
        raise ManifestError(message, "unreadable manifest")
    picked = dataset_columns(ds.features, columns, label)
    raw = undecoded(spec, picked.audio)
    for i, item in enumerate(raw.select_columns(list(picked.names()))):
        audio = item[picked.audio]
        if isinstance(audio, dict):
            source = f"{EMBEDDED}{spec}::{i}::{picked.audio}" if audio.get("bytes") else audio.get("path")
        else:
            source = audio
        yield f"{label}:row {i}", picked.row(item, source), base


class DatasetColumns(NamedTuple):
    """The columns a dataset's rows are read from: audio and text, and speaker / language when it has them."""

    audio: str
    text: str
    speaker: str | None
    language: str | None

    def names(self) -> tuple[str, ...]:
        return tuple(c for c in self if c)

    def row(self, item: dict, source) -> dict:
        """A manifest row (data/manifest.py) of one dataset item, its audio as `source`."""
        row = {"audio_filepath": source, "text": item[self.text]}
        if self.speaker and item.get(self.speaker) is not None:
            row["speaker"] = str(item[self.speaker])
        if self.language and item.get(self.language):
            row["language"] = str(item[self.language])
        return row


def dataset_columns(features, columns: Columns, label: str) -> DatasetColumns:
    """A dataset's columns: --audio_column or the Audio-typed one (else a usual name), --text_column or a usual name.

    Raises:
        ManifestError: no audio or no text column.
    """
    import datasets

    names = list(features)
    audio_col = columns.audio or next(
        (n for n, f in features.items() if isinstance(f, datasets.Audio)),
        next((n for n in AUDIO_COLUMNS if n in names), None),
    )
    text_col = columns.text or next((n for n in TEXT_COLUMNS if n in names), None)
    if audio_col not in names or text_col not in names:
        raise ManifestError(
            f"{label}: the dataset needs an audio column ({', '.join(AUDIO_COLUMNS)}, or --audio_column) and a text "
            f"column ({', '.join(TEXT_COLUMNS)}, or --text_column); it has {', '.join(names)}",
            "unreadable manifest",
        )
    speaker_col = next((c for c in SPEAKER_COLUMNS if c in names), None)
    language_col = next((c for c in LANGUAGE_COLUMNS if c in names), None)
    return DatasetColumns(audio_col, text_col, speaker_col, language_col)
