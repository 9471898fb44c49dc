"""--streaming: a corpus read as it arrives (hub datasets, parquet shards larger than the disk), never cached whole.

Each process reads its own shards (`datasets.distributed.split_dataset_by_node`) in an order that is shuffled per
epoch with the seed (datasets' shard shuffle), validates and encodes every row as it arrives (on its own device),
and keeps up to --shuffle_buffer encoded rows, from which a seeded generator draws each micro-batch.

What a checkpoint holds (`state_dict`, one file per process): the reader's position (datasets' `state_dict` of the
streaming dataset), the epoch, the generator's state and the encoded rows in the buffer (text token ids and int16
codes: about 4 KB for a 10 s clip). So a resume on the same corpus and the same number of processes continues with
exactly the micro-batches an uninterrupted run would have drawn. Not exact: a resume with another number of
processes (refused: the shards are split another way), and a corpus whose shards changed on the hub (refused unless
--on_data_change says what to do: then a fresh epoch starts).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from higgs_train.data.audio import decode_audio, load_audio
from higgs_train.data.codes import encode_wave
from higgs_train.data.collate import Example, TokenLayout, assemble, example_length, text_pieces
from higgs_train.data.formats import EMBEDDED, HUB, Columns, dataset_columns, hub_spec, parquet_files
from higgs_train.data.manifest import parse_row, with_language
from higgs_train.data.tokens import user_tokens
from higgs_train.errors import AudioError, ConfigError, ManifestError
from higgs_train.language import parse_languages

STATE_VERSION = 1
SHOWN_BAD_ROWS = 5  # bad rows named one by one under --on_bad_sample skip; then only counted


@dataclass
class Encoded:
    """One validated, encoded row waiting in the shuffle buffer: its text pieces' token ids and its clips' codes."""

    pieces: list[np.ndarray]  # int32
    clips: list[np.ndarray]  # (codebooks, frames) int16


def open_stream(manifest: str, columns: Columns = Columns()):
    """The streaming `datasets.IterableDataset` of `hf://OWNER/NAME[:SPLIT]` or a parquet file / folder of shards,
    its columns, and its identity (the source and its shards: what a checkpoint's position refers to).

    Raises:
        ManifestError: a source --streaming cannot read, or one without an audio and a text column.
    """
    import datasets

    if manifest.startswith(HUB):
        name, _, split = hub_spec(manifest)[len("hub=") :].rpartition(":")
        opener = lambda: datasets.load_dataset(name, split=split, streaming=True)  # noqa: E731
    else:
        files = [str(p) for p in parquet_files(Path(manifest))] if Path(manifest).exists() else []
        if not files or not all(f.endswith(".parquet") for f in files):
            raise ManifestError(
                f"{manifest}: --streaming reads hf://OWNER/NAME[:SPLIT] or parquet shards (a .parquet file or a folder "
                "of them); prepare other manifests without --streaming (they are cached once)",
                "unreadable manifest",
            )
        opener = lambda: datasets.load_dataset(  # noqa: E731
            "parquet", data_files={"train": files}, split="train", streaming=True
        )
    try:
        ds = opener()
    except Exception as e:  # datasets raises many types for a source it cannot reach or read
        raise ManifestError(
            f"{manifest}: cannot open the stream ({type(e).__name__}: {str(e)[:200]})", "unreadable manifest"
        ) from e
    if ds.features is None:
        raise ManifestError(f"{manifest}: the stream declares no columns; pass --text_column and --audio_column")
    picked = dataset_columns(ds.features, columns, manifest)
    if isinstance(ds.features.get(picked.audio), datasets.Audio):
        ds = ds.cast_column(picked.audio, datasets.Audio(decode=False))
    ds = ds.select_columns(list(picked.names()))
    shards = json.dumps([manifest, ds.n_shards, _shard_names(ds)])
    return ds, picked, f"stream1-{hashlib.sha256(shards.encode()).hexdigest()[:32]}"


def _shard_names(ds) -> list[str]:
    """The stream's shard files as datasets lists them (through its wrapping iterables), a local file with its size
    and modification time: what a checkpoint's reader position counts in."""
    ex = ds._ex_iterable
    while not (getattr(ex, "kwargs", None) or {}).get("files") and hasattr(ex, "ex_iterable"):
        ex = ex.ex_iterable
    files = (getattr(ex, "kwargs", None) or {}).get("files") or []
    out = []
    for f in files if isinstance(files, list) else []:
        stat = os.stat(f) if isinstance(f, str) and os.path.isfile(f) else None
        out.append(f"{f}|{stat.st_size}|{stat.st_mtime_ns}" if stat else str(f))
    return out


class Stream:
    """This process's micro-batches of a streamed corpus: `take(n)` draws n examples from the shuffle buffer,
    refilling it from the reader (next epoch when a pass ends); `state_dict` / `load_state_dict` for checkpoints,
    `mark` / `rewind` for a window a stop signal cut."""

    def __init__(
        self,
        cfg,
        processor,
        layout: TokenLayout,
        rank: int,
        world: int,
        say: Callable[[str], None],
        max_positions: int | None = None,
        device="cpu",
    ):
        from datasets.distributed import split_dataset_by_node

        self.cfg, self.processor, self.layout, self.say = cfg, processor, layout, say
        self.rank, self.world, self.max_positions, self.device = rank, world, max_positions, device
        self.languages = parse_languages(cfg.language)
        ds, self.columns, self.identity = open_stream(cfg.train_manifest, Columns(cfg.text_column, cfg.audio_column))
        if world > 1 and ds.n_shards % world:
            say(
                f"warning: {ds.n_shards} shards do not divide among {world} processes: each reads every shard and "
                f"keeps one row in {world}; reshard the corpus into a multiple of {world} files to read less"
            )
        self.source = split_dataset_by_node(ds, rank, world)
        self.capacity = cfg.shuffle_buffer
        self.epoch, self.read, self.bad = 0, 0, 0
        self.epoch_rows = 0  # usable rows read in this epoch
        self.draining = False  # the pass is read: the buffer is drawn empty before the next begins
        self.buffer: list[Encoded] = []
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, rank])))
        self._open(None)

    def _open(self, reader_state: dict | None) -> None:
        self.reader = self.source.shuffle(seed=self.cfg.seed, buffer_size=1)  # the shard order, per epoch
        self.reader.set_epoch(self.epoch)
        if reader_state:
            with _quiet_datasets():  # "a shuffle buffer without its content": ours is of size 1, nothing is lost
                self.reader.load_state_dict(reader_state)
        self._rows = iter(self.reader)
        # the reader's own state_dict is valid only once it has yielded: until then, the state it was opened at
        self._opened_at = dict(reader_state or {})

    def take(self, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            self._fill()
            j = int(self.rng.integers(len(self.buffer)))
            self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
            item = self.buffer.pop()
            out.append(assemble(item.pieces, [c.astype(np.int64) for c in item.clips], self.layout))
        return out

    def _fill(self) -> None:
        """Top the buffer up from the reader; at the end of a pass the buffer is drawn empty first, so every pass
        trains each of this process's rows once, then the next pass (its own shard order) begins."""
        while len(self.buffer) < self.capacity:
            if self.draining:
                if self.buffer:
                    return
                self.start_epoch(self.epoch + 1)
            try:
                item = next(self._rows)
                self._opened_at = None
            except StopIteration:
                if self.epoch_rows == 0:
                    raise ManifestError(
                        f"{self.cfg.train_manifest}: process {self.rank} read a whole pass of its shards and found no "
                        "usable row; see the warnings above, or run fewer processes than the corpus has shards",
                        "no data",
                    ) from None
                self.draining = True
                continue
            self.read += 1
            encoded = self._encode(item, f"{self.cfg.train_manifest}:epoch {self.epoch}, row {self.read}")
            if encoded is not None:
                self.buffer.append(encoded)
                self.epoch_rows += 1

    def _encode(self, item: dict, where: str) -> Encoded | None:
        """One row validated (text, audio, durations, tokens) and encoded; None for a bad row under --on_bad_sample
        skip (named for the first few, counted after).

        Raises:
            ManifestError: a bad row under --on_bad_sample error, naming it and why.
        """
        cfg = self.cfg
        try:
            audio = item[self.columns.audio]
            row = self.columns.row(item, f"{EMBEDDED}stream")
            sample = with_language(parse_row(row, where, Path.cwd()), self.languages)
            wave = self._wave(audio, where)
            seconds = len(wave) / self.processor.audio_tokenizer.config.sample_rate
            if not cfg.min_duration <= seconds <= cfg.max_duration:
                raise AudioError(
                    f"{where}: clip is {seconds:.2f}s, outside --min_duration {cfg.min_duration}s .. --max_duration "
                    f"{cfg.max_duration}s",
                    "too short" if seconds < cfg.min_duration else "too long",
                )
            pieces = text_pieces(sample, self.layout)
            if user_tokens(sample, self.layout.tokenizer) > cfg.max_text_tokens:
                message = f"{where}: text has over --max_text_tokens {cfg.max_text_tokens} tokens; split the row"
                raise ManifestError(message, "text too long")
            rate = self.processor.audio_tokenizer.config.sample_rate
            codes = encode_wave(self.processor.audio_tokenizer, wave, rate, self.device).codes
            length = example_length([len(p) for p in pieces], [codes.shape[1]], self.layout.num_codebooks)
            if self.max_positions is not None and length > self.max_positions:
                raise ManifestError(
                    f"{where}: {length} tokens exceed the model's {self.max_positions} positions; use a shorter clip",
                    "sequence too long",
                )
        except (ManifestError, AudioError) as e:
            return self._bad(e, where)
        return Encoded(pieces, [np.asarray(codes, np.int16)])

    def _wave(self, audio, where: str) -> torch.Tensor:
        rate = self.processor.audio_tokenizer.config.sample_rate
        if isinstance(audio, dict) and audio.get("bytes"):
            return decode_audio(io.BytesIO(audio["bytes"]), audio.get("path") or "(embedded)", rate, f"{where}: ")
        path = audio.get("path") if isinstance(audio, dict) else audio
        if not isinstance(path, str) or not path:
            raise AudioError(f"{where}: the audio column holds no audio", "missing audio")

        return load_audio(path, rate, where)

    def _bad(self, error: ManifestError | AudioError, where: str) -> None:
        message = str(error) if str(error).startswith(where) else f"{where}: {error}"
        if self.cfg.on_bad_sample == "error":
            raise ManifestError(
                f"{message} (--on_bad_sample error; pass --on_bad_sample skip to drop bad rows as they arrive)",
                error.reason,
            )
        self.bad += 1
        if self.bad <= SHOWN_BAD_ROWS:
            self.say(f"warning: skipping {message}")
        elif self.bad in (SHOWN_BAD_ROWS + 1, 100, 1000, 10000):
            self.say(f"warning: {self.bad} bad rows skipped so far (of {self.read} read on process {self.rank})")
        return None

    # checkpoints
    def _meta(self) -> dict:
        return {
            "version": STATE_VERSION,
            "identity": self.identity,
            "rank": self.rank,
            "world": self.world,
            "epoch": self.epoch,
            "epoch_rows": self.epoch_rows,
            "draining": self.draining,
            "read": self.read,
            "bad": self.bad,
            "reader": self.reader.state_dict() if self._opened_at is None else self._opened_at,  # {}: the start
            "rng": self.rng.bit_generator.state,
        }

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able metadata): the position, the generator and the buffer's rows (see the module text)."""
        return _buffer_tensors(self.buffer), self._meta()

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Continue exactly where a checkpoint's stream stopped.

        Raises:
            ConfigError: the checkpoint streamed another corpus or was split among another number of processes.
        """
        if meta.get("world") != self.world:
            raise ConfigError(
                f"the checkpoint streamed its corpus split among {meta.get('world')} processes, this run has "
                f"{self.world}: a stream's position is per process; resume with {meta.get('world')} processes"
            )
        self._restore(meta, _buffer_rows(tensors))

    def start_epoch(self, epoch: int) -> None:
        """A fresh pass from the start of `epoch`'s shard order with an empty buffer."""
        self.epoch, self.epoch_rows, self.draining, self.buffer = epoch, 0, False, []
        self._open(None)

    def mark(self):
        """What `rewind` needs to return here: the position, the generator and the buffer (its rows are shared)."""
        return self._meta(), list(self.buffer)

    def rewind(self, mark) -> None:
        self._restore(*mark)

    def _restore(self, meta: dict, buffer: list[Encoded]) -> None:
        self.epoch, self.epoch_rows, self.draining = int(meta["epoch"]), int(meta["epoch_rows"]), bool(meta["draining"])
        self.read, self.bad = int(meta["read"]), int(meta["bad"])
        self.rng.bit_generator.state = meta["rng"]
        self.buffer = buffer
        self._open(meta["reader"])


def _buffer_tensors(buffer: list[Encoded]) -> dict[str, torch.Tensor]:
    """The buffer as flat tensors: every piece's ids, piece and clip counts per row, codes with frames per clip."""
    pieces = [p for e in buffer for p in e.pieces]
    clips = [c for e in buffer for c in e.clips]
    k = clips[0].shape[0] if clips else 0
    return {
        "piece_ids": torch.from_numpy(np.concatenate(pieces) if pieces else np.zeros(0, np.int32)).to(torch.int32),
        "piece_lengths": torch.tensor([len(p) for p in pieces], dtype=torch.int64),
        "pieces_per_row": torch.tensor([len(e.pieces) for e in buffer], dtype=torch.int64),
        "codes": torch.from_numpy(np.concatenate(clips, axis=1) if clips else np.zeros((k, 0), np.int16)),
        "clip_frames": torch.tensor([c.shape[1] for c in clips], dtype=torch.int64),
        "clips_per_row": torch.tensor([len(e.clips) for e in buffer], dtype=torch.int64),
    }


def _buffer_rows(tensors: dict[str, torch.Tensor]) -> list[Encoded]:
    ids, codes = tensors["piece_ids"].numpy(), tensors["codes"].numpy()
    piece_ends, clip_ends = np.cumsum(tensors["piece_lengths"].numpy()), np.cumsum(tensors["clip_frames"].numpy())
    pieces = np.split(ids, piece_ends[:-1]) if len(piece_ends) else []
    clips = np.split(codes, clip_ends[:-1], axis=1) if len(clip_ends) else []
    rows, p, c = [], 0, 0
    for n_pieces, n_clips in zip(tensors["pieces_per_row"].tolist(), tensors["clips_per_row"].tolist(), strict=True):
        rows.append(Encoded(list(pieces[p : p + n_pieces]), [x.copy() for x in clips[c : c + n_clips]]))
        p, c = p + n_pieces, c + n_clips
    return rows


class _quiet_datasets:
    def __enter__(self):
        self.logger = logging.getLogger("datasets.iterable_dataset")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def resume_stream(stream: Stream, saved: tuple | None, on_data_change: str, say: Callable[[str], None]) -> None:
    """Put a checkpoint's stream state back into `stream` (`saved`: None when the checkpoint holds none).

    Raises:
        ConfigError: the checkpoint streamed another corpus (or the same one's shards changed) and --on_data_change
            is error, or it ran with another number of processes.
    """
    if saved is None:
        say(
            "warning: the checkpoint holds no stream position (an adapter-only fallback, or saved without "
            "--streaming): the stream starts a fresh pass"
        )
        return
    tensors, meta = saved
    if meta.get("identity") == stream.identity:
        stream.load_state_dict(tensors, meta)
        return
    if on_data_change == "error":
        raise ConfigError(
            f"the checkpoint streamed another corpus (or {stream.cfg.train_manifest}'s shards changed since): its "
            "position counts the old shards; rerun with --on_data_change restart_epoch (keep the step, optimizer and "
            "schedule, start a fresh pass over the new shards) or another --output_dir"
        )
    stream.start_epoch(int(meta.get("epoch", 0)) + 1)
    say(f"warning: the streamed corpus changed; --on_data_change {on_data_change}: a fresh pass, epoch {stream.epoch}")
