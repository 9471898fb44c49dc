"""Data benchmark: prepare throughput (clips/s, seconds of audio per second) and how long the training step waits
for its batch, as a share of step time. Prints one JSON object.

Usage: python scripts/bench_data.py [--clips 60] [--num_workers 0] [--steps 30]
Uses the real clips in ../shared/data/voices when present (repeated), else synthetic ones.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from higgs_train.config import build_config  # noqa: E402
from higgs_train.data.prepare import DataLimits, TextCounts, prepare_data  # noqa: E402
from higgs_train.model import load_processor, quiet_libraries  # noqa: E402
from higgs_train.tiny import build_tiny_model, make_dataset  # noqa: E402
from higgs_train.train import train  # noqa: E402

VOICES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "voices"


def clips_folder(root: Path, n: int) -> Path:
    """N clips with bytes of their own (the sources at slightly different gains: the cache knows a clip by its
    bytes, so identical copies would be encoded once) and a manifest of them."""
    import soundfile as sf

    if VOICES.is_dir():
        sources = sorted(VOICES.glob("*.wav"))
        texts = {p: p.with_suffix(".txt").read_text().strip() for p in sources}
    else:
        manifest = make_dataset(root / "synth")
        sources = [root / "synth" / json.loads(line)["audio_filepath"] for line in manifest.read_text().splitlines()]
        texts = {p: "synthetic clip" for p in sources}
    waves = {p: sf.read(p, dtype="float32") for p in sources}
    (root / "clips").mkdir()
    rows = []
    for i in range(n):
        src = sources[i % len(sources)]
        wave, rate = waves[src]
        dst = root / "clips" / f"{i}.wav"
        sf.write(dst, wave * (1 - 1e-4 * (i + 1)), rate)
        rows.append({"audio_filepath": str(dst), "text": texts[src]})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        manifest = clips_folder(root, args.clips)
        processor = load_processor(str(model))
        start = time.perf_counter()
        data = prepare_data(
            manifest, root / "run", processor.audio_tokenizer, TextCounts(len), DataLimits(), args.num_workers
        )
        seconds = time.perf_counter() - start
        audio_s = data.report.hours * 3600
        cfg = build_config(
            {
                "train_manifest": str(manifest),
                "output_dir": str(root / "run"),
                "model": str(model),
                "max_steps": args.steps,
                "save_steps": 10**6,
                "batch_size": 4,
            }
        )
        train(cfg, log=lambda _m: None, progress_bar=False)
        rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "step_s" in r][1:]  # the first step warms up
    print(
        json.dumps(
            {
                "audio_source": "shared/data/voices" if VOICES.is_dir() else "synthetic",
                "clips": args.clips,
                "num_workers": args.num_workers,
                "prepare_seconds": round(seconds, 2),
                "prepare_clips_per_s": round(args.clips / seconds, 2),
                "prepare_audio_seconds_per_s": round(audio_s / seconds, 2),
                "audio_tokenizer": "tiny random-weight (CPU)",
                "train_steps_measured": len(steps),
                "mean_step_s": round(sum(r["step_s"] for r in steps) / len(steps), 4),
                "data_wait_share_of_step": round(sum(r["data_s"] for r in steps) / sum(r["step_s"] for r in steps), 4),
                "mean_padding_share": round(sum(r["padding_share"] for r in steps) / len(steps), 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
