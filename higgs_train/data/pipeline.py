"""The training run's data: prepare (validate + encode once) the train and eval manifests, apply
--on_bad_sample, split off --eval_fraction, and tokenize everything into Examples."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from higgs_train.checkpoint.lock import RunLock
from higgs_train.checkpoint.preflight import check_output_dir, refuse_run_overlap
from higgs_train.config import TrainConfig
from higgs_train.data.audio import source_identity
from higgs_train.data.codes import CACHE_SUBDIR, DIGESTS, Clip, CodeCache, clip_key, tokenizer_fingerprint
from higgs_train.data.collate import Example, TokenLayout, assemble
from higgs_train.data.formats import Columns
from higgs_train.data.manifest import Sample
from higgs_train.data.memo import COLUMNS, Remembered, memo_key, recall
from higgs_train.data.memo import remember as memo_remember
from higgs_train.data.prepare import (
    EVAL_REPORT_FILE,
    REPORT_FILE,
    DataLimits,
    DataReport,
    PreparedData,
    bad_data_error,
    prepare_data,
    stats_lines,
)
from higgs_train.data.rows import DataIdentity, data_identity, remember
from higgs_train.data.share import ALONE, Share, clean_syncs, end_share, launch_share
from higgs_train.data.stream import Stream
from higgs_train.data.tokens import RowTokens, layout_fingerprint
from higgs_train.distributed import main_only, make_accelerator, on_main
from higgs_train.errors import ManifestError
from higgs_train.identity import FileDigests
from higgs_train.language import parse_languages
from higgs_train.model import load_lm_config, load_processor, quiet_libraries
from higgs_train.progress import progress_bar
from higgs_train.run_folder import CACHE_DIR
from higgs_train.signals import StopSignal


@dataclass
class TrainingData:
    train: Examples
    eval: Examples
    layout: TokenLayout
    eval_samples: list[Sample]
    chars_per_second: float  # the training set's speaking rate, for the scores' duration ratio
    rates_by_language: dict[str, float]  # the same per row language
    stats: dict
    identity: DataIdentity  # of the training rows, in order: what a checkpoint's data position refers to
    stream: Stream | None = None  # --streaming: the training rows come from it, `train` is empty


def limits(cfg: TrainConfig, processor, max_positions: int | None = None) -> DataLimits:
    reserved = tuple(sorted(processor.tokenizer.get_added_vocab()))  # the special and audio markup tokens
    return DataLimits(cfg.min_duration, cfg.max_duration, cfg.max_text_tokens, max_positions, reserved)


def prepare(
    cfg: TrainConfig,
    manifest: str,
    processor,
    say: Callable[[str], None],
    progress=None,
    should_stop: Callable[[], bool] = lambda: False,
    max_positions: int | None = None,
    tokens: RowTokens | None = None,
    share: Share = ALONE,
) -> PreparedData:
    """Validate and encode one manifest; apply --on_bad_sample to what the report found.

    `max_positions` (the model's max_position_embeddings) bounds each row's whole token length. The report goes to
    data_report.json, or eval_data_report.json for the --eval_manifest.
    """
    report_file = _report_file(cfg, manifest)
    if tokens is None:
        tokens = RowTokens(cfg.output_dir, TokenLayout.from_processor(processor, _codebooks(processor)), say)
    data = prepare_data(
        manifest,
        cfg.output_dir,
        processor.audio_tokenizer,
        tokens,
        limits(cfg, processor, max_positions),
        cfg.num_workers,
        progress,
        cfg.format,
        say,
        should_stop,
        cfg.cache_shard_clips,
        Columns(cfg.text_column, cfg.audio_column),
        parse_languages(cfg.language),
        report_file,
        share,
    )
    judge(cfg, data.report, report_file, say)
    return data


def _report_file(cfg: TrainConfig, manifest: str) -> str:
    return EVAL_REPORT_FILE if manifest == cfg.eval_manifest and manifest != cfg.train_manifest else REPORT_FILE


def judge(cfg: TrainConfig, report: DataReport, report_file: str, say: Callable[[str], None]) -> None:
    """--on_bad_sample applied to a prepared manifest's report: stop (error), or warn and go on (skip); then its
    statistics.

    Raises:
        ManifestError: a bad row under --on_bad_sample error, or no usable row left.
    """
    if report.problems and cfg.on_bad_sample == "error":
        for line in report.lines():
            say(line)
        raise bad_data_error(report, report_file)
    if report.problems:
        counts = ", ".join(f"{n} {reason}" for reason, n in report.counts().items())
        say(f"warning: skipping {len(report.problems)} of {report.rows} rows of {report.manifest} ({counts})")
    if not report.good:
        raise ManifestError(f"{report.manifest}: no usable rows left; see {report_file} in --output_dir", "no data")
    for line in stats_lines(report.stats):
        say(line)


def _codebooks(processor) -> int:
    return processor.audio_tokenizer.config.num_quantizers


class Examples:
    """The run's examples as arrays: each row's token-cache handle, its token count (`lengths`) and its clips
    (row i's are `clips[j]` for j in clip_ids[offsets[i]:offsets[i + 1]]). `examples[i]` assembles one when a batch
    asks, from its token ids (memory-mapped token cache) and its clips' codes (memory-mapped code cache)."""

    def __init__(self, handles, lengths, offsets, clip_ids, clips: list[Clip], tokens: RowTokens, layout):
        self.handles, self.lengths, self.offsets, self.clip_ids = handles, lengths, offsets, clip_ids
        self.clips, self.tokens, self.layout = clips, tokens, layout

    @classmethod
    def of(cls, samples: list[Sample], handles: dict, lengths: dict, index: dict, clips: list[Clip], tokens, layout):
        """From prepared samples: `handles` and `lengths` by Sample.source (a length the check did not measure is
        measured here), `index` each clip's position in `clips`."""
        counts = np.fromiter((len(s.audio_paths) for s in samples), np.int64, len(samples))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        clip_ids = np.fromiter((index[p] for s in samples for p in s.audio_paths), np.int32, int(offsets[-1]))
        rows = np.fromiter((handles[s.source] for s in samples), np.int64, len(samples))

        def length(i: int, sample: Sample) -> int:
            if sample.source in lengths:
                return lengths[sample.source]
            return tokens.length(int(rows[i]), [clips[index[p]].codes.shape[1] for p in sample.audio_paths])

        measured = np.fromiter((length(i, s) for i, s in enumerate(samples)), np.int64, len(samples))
        return cls(rows, measured, offsets, clip_ids, clips, tokens, layout)

    def __len__(self) -> int:
        return len(self.handles)

    def __bool__(self) -> bool:
        return len(self.handles) > 0

    def __getitem__(self, i: int) -> Example:
        ids = self.clip_ids[self.offsets[i] : self.offsets[i + 1]]
        return assemble(self.tokens.pieces(int(self.handles[i])), [self.clips[j].codes for j in ids], self.layout)


def split_eval(samples: list[Sample], seed: int, fraction: float) -> tuple[list[Sample], list[Sample]]:
    """A seeded (train, eval) split holding out round(fraction * rows) rows, at least one and never all.

    Rows are ranked by a hash of the seed and their content (texts and audio file names, not paths), so the same
    data splits the same way wherever it lives.
    """

    def rank(sample: Sample) -> bytes:
        parts = [t.text or Path(t.audio).name for t in sample.turns]
        return hashlib.sha256("|".join([str(seed), *parts]).encode()).digest()

    n_eval = min(len(samples) - 1, max(1, round(fraction * len(samples))))
    held = {id(s) for s in sorted(samples, key=rank)[:n_eval]}
    return [s for s in samples if id(s) not in held], [s for s in samples if id(s) in held]


def build_training_data(
    cfg: TrainConfig,
    processor,
    num_codebooks: int,
    say,
    progress=None,
    should_stop: Callable[[], bool] = lambda: False,
    max_positions: int | None = None,
    share: Share = ALONE,
) -> TrainingData:
    """The run's train and eval examples: every manifest prepared (with `share`, this process's part of the
    tokenizing and encoding), --eval_fraction split off, the training rows' identity remembered."""
    with _rows_without_gc():
        return _build(cfg, processor, num_codebooks, say, progress, should_stop, max_positions, share)


@contextlib.contextmanager
def _rows_without_gc():
    """A start builds millions of small objects (rows, turns, paths) with no cycles among them: the cyclic
    collector would scan them again and again meanwhile (half of a start's time at 1M rows). They live for the
    run, so afterwards they are frozen out of every later collection, the training loop's included; the run's end
    unfreezes them (gc.unfreeze) for callers that live on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _build(cfg, processor, num_codebooks, say, progress, should_stop, max_positions, share) -> TrainingData:
    """The run's data from the memo of an earlier start when every process can use it (data/memo.py), else
    prepared (and remembered by the main process)."""
    layout = TokenLayout.from_processor(processor, num_codebooks, cfg.label_audio)
    tokens = RowTokens(cfg.output_dir, layout, say)
    audio_fingerprint = tokenizer_fingerprint(processor.audio_tokenizer)
    key = memo_key(cfg, limits(cfg, processor, max_positions), layout_fingerprint(layout), audio_fingerprint)
    recalled = _recall(cfg, key, tokens, audio_fingerprint, layout, say) if key else None
    if share.rank == 0:  # nobody writes before the barrier below: a killed writer's leftovers can go
        tokens.clean()
    if all(p["hit"] for p in share.gather("memo", {"hit": recalled is not None}, should_stop)):
        return recalled
    data, memo = _prepare_all(cfg, processor, layout, tokens, say, progress, should_stop, max_positions, share)
    if key and share.rank == 0:
        memo_remember(cfg.output_dir, key, memo)
    return data


def _recall(cfg, key: str, tokens: RowTokens, audio_fingerprint: str, layout, say) -> TrainingData | None:
    """The memo of `key` as the run's data, when its clips still hold what they held and the caches hold every row
    and clip; its reports judged as a prepared manifest's are."""
    memo = recall(cfg.output_dir, key)
    if memo is None:
        return None
    digests = FileDigests(Path(cfg.output_dir) / CACHE_SUBDIR / DIGESTS)
    try:
        if any(source_identity(p, digests) != c for p, c in zip(memo.paths, memo.contents, strict=True)):
            return None
    except OSError:
        return None
    keys = [clip_key(c, audio_fingerprint) for c in memo.contents]
    found = CodeCache(cfg.output_dir, say, digests).load(set(keys))
    digests.save()
    if not found.keys() >= set(keys):
        return None
    clips = [found[k] for k in keys]
    parts = {}
    for part, cols in memo.parts.items():
        handles = tokens.find(cols["token_keys"])
        if (handles < 0).any():
            return None
        parts[part] = Examples(handles, cols["lengths"], cols["offsets"], cols["clip_ids"], clips, tokens, layout)
    reports = [DataReport.from_dict(r) for r in memo.reports]
    for report in reports:
        judge(cfg, report, _report_file(cfg, report.manifest), say)
    train = reports[0]
    return TrainingData(
        parts["train"],
        parts["eval"],
        layout,
        memo.eval_samples,
        train.chars_per_second,
        train.rates_by_language,
        train.stats,
        memo.identity(),
    )


def _prepare_all(cfg, processor, layout, tokens, say, progress, should_stop, max_positions, share):
    """Every manifest prepared, --eval_fraction split off, the training rows' identity remembered: the run's data
    and its memo."""
    train = prepare(cfg, cfg.train_manifest, processor, say, progress, should_stop, max_positions, tokens, share)
    samples, eval_samples, clips, handles = train.samples, [], dict(train.clips), dict(train.handles)
    contents, lengths, reports = dict(train.contents), dict(train.lengths), [train.report]
    if cfg.eval_manifest:
        held = prepare(cfg, cfg.eval_manifest, processor, say, progress, should_stop, max_positions, tokens, share)
        eval_samples = held.samples
        clips.update(held.clips)
        handles.update(held.handles)
        contents.update(held.contents)
        lengths.update(held.lengths)
        reports.append(held.report)
    elif cfg.eval_fraction:
        if len(samples) < 2:
            raise ManifestError(f"--eval_fraction {cfg.eval_fraction} needs at least 2 usable rows", "no data")
        samples, eval_samples = split_eval(samples, cfg.seed, cfg.eval_fraction)
    identity = data_identity(samples, contents, tokens.keys([handles[s.source] for s in samples]))
    remember(identity, cfg.output_dir)
    paths = list(dict.fromkeys(p for s in (*samples, *eval_samples) for p in s.audio_paths))
    index = {p: i for i, p in enumerate(paths)}
    table = [clips[p] for p in paths]
    train_rows = Examples.of(samples, handles, lengths, index, table, tokens, layout)
    eval_rows = Examples.of(eval_samples, handles, lengths, index, table, tokens, layout)
    data = TrainingData(
        train_rows,
        eval_rows,
        layout,
        eval_samples,
        train.report.chars_per_second,
        train.report.rates_by_language,
        train.report.stats,
        identity,
    )
    unnamed = np.zeros(len(eval_rows), np.uint64)  # the eval rows have no identity of their own
    parts = {
        "train": _columns(train_rows, identity.names, identity.contents),
        "eval": _columns(eval_rows, unnamed, unnamed),
    }
    memo = Remembered(
        parts, paths, [contents[p] for p in paths], [r.to_dict() for r in reports], eval_samples, identity.digest
    )
    return data, memo


def build_stream_data(
    cfg: TrainConfig, processor, num_codebooks: int, say, progress, should_stop, max_positions, share, device
) -> TrainingData:
    """--streaming: the training rows as this process's `Stream` (encoded on `device` as they arrive); an
    --eval_manifest prepared and cached as without streaming."""
    layout = TokenLayout.from_processor(processor, num_codebooks, cfg.label_audio)
    tokens = RowTokens(cfg.output_dir, layout, say)
    stream = Stream(cfg, processor, layout, share.rank, share.world, say, max_positions, device)
    samples, handles, lengths, clips, report = [], {}, {}, {}, DataReport(cfg.train_manifest)
    if cfg.eval_manifest:
        held = prepare(cfg, cfg.eval_manifest, processor, say, progress, should_stop, max_positions, tokens, share)
        samples, handles, lengths, clips, report = held.samples, held.handles, held.lengths, held.clips, held.report
    paths = list(dict.fromkeys(p for s in samples for p in s.audio_paths))
    index = {p: i for i, p in enumerate(paths)}
    eval_rows = Examples.of(samples, handles, lengths, index, [clips[p] for p in paths], tokens, layout)
    no_rows = Examples.of([], {}, {}, {}, [], tokens, layout)
    none = np.zeros(0, np.uint64)
    identity = DataIdentity(stream.identity, 0, none, none)  # a stream's rows are not known before they are read
    return TrainingData(
        no_rows, eval_rows, layout, samples, report.chars_per_second, report.rates_by_language, {}, identity, stream
    )


def _columns(examples: Examples, names, contents) -> dict[str, np.ndarray]:
    keys = examples.tokens.keys(examples.handles)
    cols = (keys, examples.lengths, examples.offsets, examples.clip_ids, names, contents)
    return dict(zip(COLUMNS, cols, strict=True))


@contextlib.contextmanager
def encoding_progress(enabled: bool):
    """Encoding progress (clips done, clips/s, hours of audio), or None when not shown."""
    start = time.perf_counter()
    with progress_bar("encode", enabled) as bar:

        def update(done: int, total: int, seconds: float) -> None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar(done, f"{rate:.1f} clips/s, {seconds / 3600:.3f} h of audio", total)

        yield update if enabled else None


def run_prepare(cfg: TrainConfig, say: Callable[[str], None], progress_bar: bool = True) -> list[PreparedData]:
    """`higgs-train prepare`: validate and encode the train (and eval) manifests into the run's cache, holding the
    run folder's lock; SIGTERM/SIGINT/SIGHUP keep the finished clips and stop (exit 130). Under `accelerate
    launch` every process tokenizes and encodes its part (on its own device); rank 0 holds the lock and reports."""

    refuse_run_overlap(cfg)  # before anything is written
    state = make_accelerator(cfg)  # the processes of a launch, joined (gloo on the CPU)
    main = state.is_main_process
    say = say if main else (lambda _msg: None)
    on_main(state, check_output_dir, Path(cfg.output_dir))
    quiet_libraries()
    max_positions = load_lm_config(cfg.model, cfg.model_revision).max_position_embeddings
    processor = load_processor(cfg.model, cfg.audio_tokenizer, cfg.model_revision, cfg.audio_tokenizer_revision)
    processor.audio_tokenizer.to(state.device)
    out = []
    with contextlib.ExitStack() as held, StopSignal(say) as stop:
        held.callback(gc.unfreeze)
        main_only(state, lambda: held.enter_context(RunLock(cfg.output_dir, "prepare", say=say)))
        share = launch_share(state, cfg.output_dir)
        if main:
            clean_syncs(Path(cfg.output_dir) / CACHE_DIR, share.folder)
        for manifest in [m for m in (cfg.train_manifest, cfg.eval_manifest) if m]:
            with encoding_progress(progress_bar and main) as progress:
                data = prepare(
                    cfg, manifest, processor, say, progress, lambda: stop.requested, max_positions, share=share
                )
            for line in data.report.lines():
                say(line)
            say(
                f"encoded {data.report.hours:.3f} h in {data.report.encode_seconds:.1f}s; cache: {cfg.output_dir}/cache"
            )
            out.append(data)
        end_share(state, share)
    return out
