"""Text -> token ids, once per row: an Arrow cache keyed by what the chat template renders from (each turn's role
and text, where its audio sits) and by the text tokenizer and template themselves.

Rendering the template and tokenizing is most of what a start costs per row (about 0.5 ms); a warm start reads
the ids back instead. Shards are Arrow IPC files, memory-mapped: rows are read when a batch needs them, and every
process on a node shares the pages. A shard is written beside its final name and renamed into place, so a kill
leaves whole shards only; a shard that does not read is removed with a warning and its rows tokenized again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from higgs_train.data.collate import TokenLayout, example_length, text_pieces
from higgs_train.data.manifest import Sample
from higgs_train.data.share import ALONE, Share
from higgs_train.errors import Interrupted, ManifestError, OutputDirError
from higgs_train.run_folder import TOKENS_SUBDIR  # noqa: F401 - the names this module writes

SHARD_ROWS = 65536


def layout_fingerprint(layout: TokenLayout) -> str:
    """The tokenizer (its whole definition), the chat template and the audio placeholder."""
    tok = layout.tokenizer
    backend = tok.backend_tokenizer.to_str() if hasattr(tok, "backend_tokenizer") else repr(tok.get_vocab())
    ident = "\x1e".join([backend, layout.chat_template or "", layout.audio_token])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def row_key(sample: Sample) -> int:
    """What the template renders a row from: each turn's role and text, and where its audio items sit (never the
    clip's path: the released template does not render it, so moved data keeps its tokens)."""
    parts = [f"{t.role}\x1d{'' if t.audio else t.text}\x1d{'a' if t.audio else 't'}" for t in sample.turns]
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "little")


class RowTokens:
    """Every row's text pieces (token ids), from the cache or tokenized and added to it.

    `ensure(samples)` returns one handle per row (-1: the template cannot render it); `text_tokens[h]` and
    `user_tokens[h]` (the longest user text, for --max_text_tokens) are arrays over handles, `pieces(h)` reads one
    row's ids from the memory-mapped shard.
    """

    def __init__(self, output_dir: str | Path, layout: TokenLayout, say: Callable[[str], None] = print):
        self.layout = layout
        self.root = Path(output_dir) / TOKENS_SUBDIR / layout_fingerprint(layout)
        self.say = say
        self._tables: list = []
        self._paths: set[Path] = set()
        self._shard = np.empty(0, np.int32)  # per handle: its table and row
        self._row = np.empty(0, np.int64)
        self.text_tokens = np.empty(0, np.int32)
        self.user_tokens = np.empty(0, np.int32)
        self._all_keys = np.empty(0, np.uint64)  # per handle
        self._keys = np.empty(0, np.uint64)  # sorted, and the handle of each
        self._handles = np.empty(0, np.int64)
        for path in sorted(self.root.glob("shard-*.arrow")) if self.root.is_dir() else []:
            self._open(path)
        self._index()

    def _open(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            keys = table.column("key").to_numpy()
            text = pc.list_value_length(table.column("ids")).to_numpy().astype(np.int32)
            user = table.column("user_tokens").to_numpy().astype(np.int32)
        except (OSError, pa.ArrowException, KeyError) as e:
            self.say(f"warning: token cache shard {path} does not read ({type(e).__name__}); tokenizing it again")
            path.unlink(missing_ok=True)
            return
        self._shard = np.concatenate([self._shard, np.full(len(keys), len(self._tables), np.int32)])
        self._row = np.concatenate([self._row, np.arange(len(keys))])
        self.text_tokens = np.concatenate([self.text_tokens, text])
        self.user_tokens = np.concatenate([self.user_tokens, user])
        self._all_keys = np.concatenate([self._all_keys, keys])
        self._tables.append(table)
        self._paths.add(path)

    def clean(self) -> None:
        """Remove the shards a killed process left half-written (call before any process of the launch writes)."""
        for leftover in self.root.glob(".shard-*.writing") if self.root.is_dir() else []:
            leftover.unlink(missing_ok=True)

    def _index(self) -> None:
        order = np.argsort(self._all_keys, kind="stable")
        self._keys, self._handles = self._all_keys[order], order.astype(np.int64)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The handle of each row key, -1 where the cache does not hold it."""
        if not len(self._keys):
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self._handles[pos], -1)

    def ensure(
        self,
        samples: list[Sample],
        problems_out: dict[str, ManifestError] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        share: Share = ALONE,
    ) -> np.ndarray:
        """Each row's handle, tokenizing (and caching, in new shards) the rows not cached yet: this process's
        share of them, the others' shards read once all are done. A row the template cannot render gets -1 and
        its error in `problems_out` by source (without it, the error raises).

        Raises:
            Interrupted: `should_stop` turned true (the rows tokenized so far are cached).
        """
        keys = np.fromiter((row_key(s) for s in samples), np.uint64, len(samples))
        first: dict[int, int] = {}
        for i in np.flatnonzero(self.find(keys) < 0).tolist():
            first.setdefault(int(keys[i]), i)
        planned = sorted(first)
        share.agree("tokens", planned, should_stop)  # nobody writes before everyone has planned
        todo: dict[int, tuple[list[np.ndarray], int]] = {}
        for n, key in enumerate(share.mine(planned)):
            if n % 1024 == 0 and should_stop():
                if todo:
                    self._add(todo)
                raise Interrupted(
                    f"stopped by signal while tokenizing: the rows done so far are cached in {self.root}; rerun the "
                    "same command to go on"
                )
            sample = samples[first[key]]
            try:
                todo[key] = (text_pieces(sample, self.layout), user_tokens(sample, self.layout.tokenizer))
            except ManifestError as e:
                if problems_out is None:
                    raise
                problems_out[sample.source] = e
            if len(todo) >= SHARD_ROWS:  # written as it goes: memory stays one shard's worth
                self._add(todo)
                todo = {}
        if todo:
            self._add(todo)
        if share.world > 1:
            share.gather("tokens", {}, should_stop)
            for path in sorted(self.root.glob("shard-*.arrow")):
                if path not in self._paths:
                    self._open(path)
            self._index()
        handles = self.find(keys)
        for i in np.flatnonzero(handles < 0).tolist():  # rows another process could not render: the same error here
            if samples[i].source not in (problems_out or {}):
                try:
                    text_pieces(samples[i], self.layout)
                except ManifestError as e:
                    if problems_out is None:
                        raise
                    problems_out[samples[i].source] = e
        return handles

    def _add(self, rows: dict[int, tuple[list[np.ndarray], int]]) -> None:
        self._open(self._write(rows))
        self._index()

    def _write(self, rows: dict[int, tuple[list[np.ndarray], int]]) -> Path:
        import pyarrow as pa

        keys = sorted(rows)
        table = pa.table(
            {
                "key": pa.array(np.asarray(keys, np.uint64)),
                "ids": pa.array([np.concatenate(rows[k][0]) for k in keys], pa.list_(pa.int32())),
                "splits": pa.array([[len(p) for p in rows[k][0]] for k in keys], pa.list_(pa.int32())),
                "user_tokens": pa.array([rows[k][1] for k in keys], pa.int32()),
            }
        )
        name = f"shard-{time.time_ns()}-{os.getpid()}.arrow"
        tmp = self.root / f".{name}.writing"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(tmp, self.root / name)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise OutputDirError(
                f"--output_dir: cannot write the token cache {self.root} ({e.strerror or e}); free disk space or fix "
                "permissions, then rerun"
            ) from e
        return self.root / name

    def keys(self, handles) -> np.ndarray:
        """The rows' content keys (what the template renders from: roles and texts)."""
        return self._all_keys[np.asarray(handles, np.int64)]

    def pieces(self, handle: int) -> list[np.ndarray]:
        """One row's text pieces (int32 ids), read from its shard."""
        table, row = self._tables[self._shard[handle]], int(self._row[handle])
        ids = table.column("ids")[row].values.to_numpy(zero_copy_only=False)
        return np.split(ids, np.cumsum(table.column("splits")[row].as_py())[:-1])

    def length(self, handle: int, clip_frames) -> int:
        """The whole example's tokens (text pieces and clips)."""
        return example_length([self.text_tokens[handle]], clip_frames, self.layout.num_codebooks)


def user_tokens(sample: Sample, tokenizer) -> int:
    """The most text tokens of one user turn (what --max_text_tokens bounds)."""
    texts = [t.text for t in sample.turns if t.role == "user" and t.text]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return max((len(x) for x in ids), default=0)
