"""What the run hears while it trains: scores by listening (--score_steps) and samples (--sample_steps). Neither
ever stops training or touches a save, and both leave the random state as they found it."""

from __future__ import annotations

from higgs_train.checkpoint.layout import checkpoint_name
from higgs_train.checkpoint.state import capture_rng, restore_rng
from higgs_train.config import TrainConfig
from higgs_train.data.formats import Columns
from higgs_train.data.manifest import load_manifest
from higgs_train.distributed import main_only
from higgs_train.generate import generate_speech, write_wav
from higgs_train.language import parse_languages
from higgs_train.scoring.score import Scorer, append_score, items_from_samples, mark_best, sample_file, scored_clips_dir


def make_scorer(cfg: TrainConfig, accelerator, processor, data):
    """The main process's Scorer and the rows it scores, or None when scoring is off."""
    if not cfg.score_steps:
        return None

    def make() -> tuple:
        columns, languages = Columns(cfg.text_column, cfg.audio_column), parse_languages(cfg.language)
        if cfg.score_manifest:
            samples = load_manifest(cfg.score_manifest, columns=columns, languages=languages)
        else:
            samples = data.eval_samples
        items = items_from_samples(samples, cfg.score_samples)
        scorer = Scorer(
            processor,
            cfg.asr_model,
            data.chars_per_second,
            cfg.sample_max_frames,
            cfg.speaker_model,
            data.rates_by_language,
            {item.language for item in items},
        )
        return scorer, items

    return main_only(accelerator, make)  # an ASR model that fails to load stops every rank, before training


def score_now(cfg: TrainConfig, scorer, model, step: int, eval_loss, metrics, say) -> None:
    """Score the current adapter, log it, move the `best` pointer; a failure is logged and training goes on."""

    saved = capture_rng()
    try:
        row = scorer[0].score(model, scorer[1], step, eval_loss, keep=scored_clips_dir(cfg.output_dir, step))
        row.checkpoint = checkpoint_name(step)
        append_score(cfg.output_dir, row)
        if metrics:
            metrics.log(
                {
                    "step": row.step,
                    **{
                        f"score_{k}": v
                        for k, v in row.to_dict().items()
                        if k not in ("step", "checkpoint", "eval_loss") and v is not None
                    },
                }
            )
        best = mark_best(cfg.output_dir, cfg.select_best_by)
        say(
            f"score at step {row.step}: {row.headline_name} {row.headline:.3f}, similarity {row.similarity:.3f}, "
            f"duration ratio {row.duration_ratio:.2f}; best: {best.checkpoint if best else '-'}"
        )
    except Exception as e:  # scoring informs the choice of checkpoint; it never stops training or a save
        say(f"warning: scoring at step {step} failed ({type(e).__name__}: {e}); training goes on")
    finally:
        restore_rng(saved)


def sample_now(cfg: TrainConfig, model, processor, step: int, metrics, say) -> None:
    """Write OUTPUT_DIR/samples/step-N.wav; a failure is logged and never stops the run or touches a save."""

    try:
        speech = generate_speech(
            model,
            processor,
            cfg.sample_text,
            cfg.sample_ref_audio,
            cfg.sample_ref_text,
            max_new_frames=cfg.sample_max_frames,
            seed=cfg.seed,
        )
        path = write_wav(speech, sample_file(cfg.output_dir, step))
        if metrics:
            metrics.audio("sample", speech.wave, speech.sample_rate, step, path)
        say(f"sample: {path} ({len(speech.wave) / speech.sample_rate:.2f}s)")
    except Exception as e:  # a sample is a convenience: report it, keep training
        say(f"warning: sample at step {step} failed ({type(e).__name__}: {e}); training goes on")
