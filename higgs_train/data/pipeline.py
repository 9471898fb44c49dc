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

from higgs_train.config import TrainConfig
from higgs_train.data.collate import Example, TokenLayout, assemble
from higgs_train.data.formats import Columns
from higgs_train.data.manifest import Sample
from higgs_train.data.prepare import (
    EVAL_REPORT_FILE,
    REPORT_FILE,
    DataLimits,
    PreparedData,
    bad_data_error,
    prepare_data,
    stats_lines,
)
from higgs_train.data.rows import DataIdentity, data_identity, remember
from higgs_train.data.share import ALONE, Share
from higgs_train.data.tokens import RowTokens
from higgs_train.errors import ManifestError
from higgs_train.language import parse_languages
from higgs_train.progress import progress_bar


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
    report_file = EVAL_REPORT_FILE if manifest == cfg.eval_manifest and manifest != cfg.train_manifest else REPORT_FILE
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
    report = data.report
    if report.problems and cfg.on_bad_sample == "error":
        for line in report.lines():
            say(line)
        raise bad_data_error(report, report_file)
    if report.problems:
        counts = ", ".join(f"{n} {reason}" for reason, n in report.counts().items())
        say(f"warning: skipping {len(report.problems)} of {report.rows} rows of {manifest} ({counts})")
    if not data.samples:
        raise ManifestError(f"{manifest}: no usable rows left; see {report_file} in --output_dir", "no data")
    for line in stats_lines(report.stats):
        say(line)
    return data


def _codebooks(processor) -> int:
    return processor.audio_tokenizer.config.num_quantizers


class Examples:
    """The run's examples, each assembled when a batch asks for it (`examples[i]`) from its token ids (read from
    the memory-mapped token cache) and its clips' codes; `lengths` holds every example's token count."""

    def __init__(self, samples: list[Sample], handles: dict, tokens: RowTokens, clips: dict, layout, lengths: dict):
        self.samples, self.tokens, self.clips, self.layout = samples, tokens, clips, layout
        self.handles = np.fromiter((handles[s.source] for s in samples), np.int64, len(samples))

        def length(i: int, sample: Sample) -> int:  # measured by prepare's length check, else here
            if sample.source in lengths:
                return lengths[sample.source]
            return tokens.length(int(self.handles[i]), [clips[p].codes.shape[1] for p in sample.audio_paths])

        self.lengths = np.fromiter((length(i, s) for i, s in enumerate(samples)), np.int64, len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __bool__(self) -> bool:
        return bool(self.samples)

    def __getitem__(self, i: int) -> Example:
        sample = self.samples[i]
        clips = [self.clips[p].codes for p in sample.audio_paths]
        return assemble(self.tokens.pieces(int(self.handles[i])), clips, self.layout)


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
    layout = TokenLayout.from_processor(processor, num_codebooks)
    tokens = RowTokens(cfg.output_dir, layout, say)
    train = prepare(cfg, cfg.train_manifest, processor, say, progress, should_stop, max_positions, tokens, share)
    samples, eval_samples, clips, handles = train.samples, [], dict(train.clips), dict(train.handles)
    contents, lengths = dict(train.contents), dict(train.lengths)
    if cfg.eval_manifest:
        held = prepare(cfg, cfg.eval_manifest, processor, say, progress, should_stop, max_positions, tokens, share)
        eval_samples = held.samples
        clips.update(held.clips)
        handles.update(held.handles)
        contents.update(held.contents)
        lengths.update(held.lengths)
    elif cfg.eval_fraction:
        if len(samples) < 2:
            raise ManifestError(f"--eval_fraction {cfg.eval_fraction} needs at least 2 usable rows", "no data")
        samples, eval_samples = split_eval(samples, cfg.seed, cfg.eval_fraction)
    identity = data_identity(samples, contents, tokens.keys([handles[s.source] for s in samples]))
    remember(identity, cfg.output_dir)
    return TrainingData(
        identity=identity,
        train=Examples(samples, handles, tokens, clips, layout, lengths),
        eval=Examples(eval_samples, handles, tokens, clips, layout, lengths),
        layout=layout,
        eval_samples=eval_samples,
        chars_per_second=train.report.chars_per_second,
        rates_by_language=train.report.rates_by_language,
        stats=train.report.stats,
    )


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
    from higgs_train.checkpoint.lock import RunLock
    from higgs_train.checkpoint.preflight import check_output_dir
    from higgs_train.data.share import clean_syncs, end_share, launch_share
    from higgs_train.distributed import make_accelerator, on_main
    from higgs_train.model import load_lm_config, load_processor, quiet_libraries
    from higgs_train.signals import StopSignal

    state = make_accelerator(cfg)  # the processes of a launch, joined (gloo on the CPU)
    main = state.is_main_process
    say = say if main else (lambda _msg: None)
    on_main(state, check_output_dir, Path(cfg.output_dir))
    quiet_libraries()
    max_positions = load_lm_config(cfg.model).max_position_embeddings
    processor = load_processor(cfg.model, cfg.audio_tokenizer)
    processor.audio_tokenizer.to(state.device)
    out = []
    with contextlib.ExitStack() as held, StopSignal(say) as stop:
        held.callback(gc.unfreeze)
        on_main(state, lambda: held.enter_context(RunLock(cfg.output_dir, "prepare", say=say)) and None)
        share = launch_share(state, cfg.output_dir)
        if main:
            clean_syncs(Path(cfg.output_dir) / "cache", share.folder)
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
