"""OUTPUT_DIR, one map: every name a run folder holds, and which module writes it. What a checkpoint folder holds
inside is in checkpoint/layout.py."""

from __future__ import annotations

# the run (train.py, checkpoint/)
CONFIG_FILE = "config.json"  # the resolved config of the run's latest start
STOPPED = "STOPPED"  # written when a run stopped cleanly on a signal after saving; removed when it starts again
LATEST = "latest"  # a one-line file naming the newest published checkpoint folder
BEST = "best"  # a one-line file naming the best-scoring checkpoint folder (never rotated away)
FAILED_DIR = ".failed"  # partial saves moved aside, each with an error.txt
LOCK_FILE = ".higgs-train.lock"  # checkpoint/lock.py: the process that holds the folder
# metrics.py, plot.py
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TRACKER_IDS = "trackers.json"  # {"wandb": run id, "mlflow": run id}: a resume logs into the same runs
CURVES_PNG = "curves.png"
# data/ (prepare.py, codes.py, tokens.py, rows.py, memo.py, share.py)
DATA_REPORT = "data_report.json"
EVAL_DATA_REPORT = "eval_data_report.json"  # the --eval_manifest's: never over the training data's report
CACHE_DIR = "cache"
CODES_SUBDIR = "cache/codes"
TOKENS_SUBDIR = "cache/tokens"
ROWS_SUBDIR = "cache/rows"
MEMO_SUBDIR = "cache/prepared"
SYNC_PREFIX = ".sync-"  # cache/.sync-LAUNCH/: the markers of one launch
# scoring/, listening.py, report.py
SCORES_FILE = "scores.jsonl"
SCORES_PNG = "scores.png"
SAMPLES_DIR = "samples"  # samples/step-N.wav (--sample_steps), samples/step-N/item-I.wav + items.json (scores)
REPORT_HTML = "report.html"
REPORT_FILES = "report_files"  # copies of the reference clips the page plays
