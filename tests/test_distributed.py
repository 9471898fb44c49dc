"""Two real processes on the CPU (gloo) through `accelerate launch`, as users run several GPUs."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer
from typer.testing import CliRunner

from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.cli import app
from higgs_train.distributed import adapter_digest, check_replicas
from higgs_train.errors import CheckpointError
from higgs_train.faults import ENV
from tests.conftest import REPO, train_args, wait_for_steps

ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_cmd(*options: str) -> list[str]:
    """`accelerate launch` with the defaults it would otherwise warn about, then `options`."""
    return [ACCELERATE, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *options]


def launch(args, env_extra=None, script=("-m", "higgs_train")):
    port = str(free_port())
    cmd = accelerate_cmd("--multi_gpu", "--num_processes", "2", "--main_process_port", port, *script, *args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(proc, timeout=240):
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"launch did not finish within {timeout}s (a rank hung)")
    return proc.returncode, log


def refused(cmd) -> str:
    """Run a launch that must stop before training; return its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    return result.stdout + result.stderr


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_replica_check_names_the_ranks():
    a = {"x": torch.ones(3)}
    b = {"x": torch.tensor([1.0, 1.0, 1.5])}
    check_replicas([adapter_digest(a), adapter_digest(dict(a))], 5)
    with pytest.raises(
        CheckpointError, match=r"adapter replicas differ at step 5: rank\(s\) \[1\] do not match rank 0"
    ):
        check_replicas([adapter_digest(a), adapter_digest(b)], 5)


@pytest.mark.slow
def test_two_processes_match_one_with_same_global_batch(synth_manifest, tiny_model, tmp_path):
    common = ["--max_steps", "4", "--save_steps", "2", "--lora_dropout", "0", "--lr", "1e-2"]
    one = CliRunner().invoke(
        app, train_args(synth_manifest, tmp_path / "one", tiny_model, *common, "--batch_size", "2")
    )
    assert one.exit_code == 0, one.output
    script = (shutil.which("higgs-train") or os.path.join(os.path.dirname(sys.executable), "higgs-train"),)
    code, log = finish(
        launch(train_args(synth_manifest, tmp_path / "two", tiny_model, *common, "--batch_size", "1"), script=script)
    )
    assert code == 0, log
    assert log.count("done: step 4") == 1  # only the main process reports
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")), rtol=1e-4, atol=1e-5
    )
    ckpt = tmp_path / "two" / "checkpoint-4"
    assert (
        verify_checkpoint(ckpt).ok
        and (ckpt / "rng_state_0.safetensors").exists()
        and (ckpt / "rng_state_1.safetensors").exists()
    )
    a, b = (
        load_file(ckpt / "adapter_model.safetensors"),
        load_file(tmp_path / "one/checkpoint-4/adapter_model.safetensors"),
    )
    # Same rows, different padded shapes and thread splits per process: float32 kernels round differently, and
    # Adam turns tiny gradient differences into update differences (seen: 4e-5 alone, up to ~1e-4 inside the
    # suite). Gradients that were not averaged would differ by about one update (lr = 1e-2), 20x the tolerance.
    assert all(torch.allclose(a[k], b[k], atol=5e-4) for k in a)


@pytest.mark.slow
def test_rank_killed_mid_save_then_resume_is_bitwise(synth_manifest, tiny_model, tmp_path):
    common = ["--max_steps", "6", "--save_steps", "2", "--lr", "5e-3"]
    code, log = finish(launch(train_args(synth_manifest, tmp_path / "a", tiny_model, *common)))
    assert code == 0, log
    args = train_args(synth_manifest, tmp_path / "b", tiny_model, *common)
    start = time.time()
    code, log = finish(launch(args, {ENV: "before_rename@4"}), timeout=180)  # rank 0 SIGKILLs itself mid-save
    assert code != 0 and time.time() - start < 180
    assert not (tmp_path / "b" / "checkpoint-4").exists() and verify_checkpoint(tmp_path / "b" / "checkpoint-2").ok
    code, log = finish(launch(args))
    assert code == 0, log
    assert "resumed from" in log and "checkpoint-2 at step 2" in log
    a = load_file(tmp_path / "a/checkpoint-6/adapter_model.safetensors")
    b = load_file(tmp_path / "b/checkpoint-6/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_stream_their_own_shards_and_save_both_positions(stream_corpus, tiny_model, tmp_path):
    """--streaming under a 2-process launch: each process reads 2 of the 4 shards (its rows never the other's),
    each checkpoint holds both processes' positions, and the launch's rerun resumes from them."""
    from higgs_train.checkpoint.state import read_stream

    out = tmp_path / "run"
    args = train_args(stream_corpus, out, tiny_model, "--streaming", "--max_steps", "2", "--save_steps", "2")
    code, log = finish(launch([*args, "--shuffle_buffer", "3"]))
    assert code == 0, log
    ckpt = out / "checkpoint-2"
    assert verify_checkpoint(ckpt).ok
    states = [read_stream(ckpt / f"stream_state_{rank}.safetensors") for rank in (0, 1)]
    metas = [meta for _, meta in states]
    assert [m["rank"] for m in metas] == [0, 1] and all(m["world"] == 2 and m["read"] >= 3 for m in metas)
    assert metas[0]["identity"] == metas[1]["identity"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    buffered = [set(re.findall(r"Row (\d+)", tokenizer.decode(t["piece_ids"]))) for t, _ in states]
    assert buffered[0] and buffered[1] and not buffered[0] & buffered[1]  # each process holds its own shards' rows
    code, log = finish(launch([*args[:-4], "--max_steps", "3", "--save_steps", "2", "--shuffle_buffer", "3"]))
    assert code == 0, log
    assert "checkpoint-2 at step 2" in log and verify_checkpoint(out / "checkpoint-3").ok


@pytest.mark.slow
def test_writer_failure_stops_every_rank(synth_manifest, tiny_model, tmp_path):
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "4", "--save_steps", "2")
    start = time.time()
    code, log = finish(launch(args, {ENV: "before_write@2:enospc"}), timeout=180)
    assert code != 0 and time.time() - start < 180
    # every rank learns the outcome through the broadcast and stops with the error, none waits at a barrier
    assert "error: save at step 2 failed (OSError: [Errno 28] No space left on device (injected)" in log, log
    # torchrun names the first rank to end: rank 0's exit 3, or (seen once under heavy load) the other rank
    # aborting in gloo's teardown after rank 0 had left; either way every rank stopped and nothing was published
    assert "exitcode  : 3" in log or "Signal 6 (SIGABRT)" in log, log
    # with --async_save the step-2 failure is learnt at the step-4 save, which completes before the run stops
    assert not (tmp_path / "run" / "checkpoint-2").exists()


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_at_the_same_step(synth_manifest, tiny_model, tmp_path):
    out = tmp_path / "run"
    proc = launch(train_args(synth_manifest, out, tiny_model, "--max_steps", "100000", "--save_steps", "100000"))
    wait_for_steps(out, 2)
    rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGTERM)
    code, log = finish(proc, timeout=120)
    saved = list(out.glob("checkpoint-*"))
    assert len(saved) == 1 and verify_checkpoint(saved[0]).ok, log
    step = saved[0].name.split("-")[1]
    assert log.count(f"stopped by signal at step {step}") == 2, log  # both ranks, the same step


@pytest.mark.slow
def test_fsdp_config_without_gpu_is_refused_not_switched(synth_manifest, tiny_model, tmp_path):
    fsdp_cfg = tmp_path / "fsdp.yaml"
    text = (REPO / "configs/accelerate/fsdp.yaml").read_text()
    fsdp_cfg.write_text(text.replace("num_processes: 8", "num_processes: 2").replace("bf16", '"no"'))
    cmd = [
        ACCELERATE,
        "launch",
        "--config_file",
        str(fsdp_cfg),
        "--main_process_port",
        str(free_port()),
        "-m",
        "higgs_train",
        *train_args(synth_manifest, tmp_path / "fsdp", tiny_model),
    ]
    assert (
        "error: the accelerate config asks for FSDP, which needs GPUs; on a machine without GPU use "
        "configs/accelerate/cpu2.yaml (data parallel with gloo)"
    ) in refused(cmd)


@pytest.mark.slow
def test_cpu_flag_that_starts_one_process_is_refused(synth_manifest, tiny_model, tmp_path):
    cmd = accelerate_cmd(
        "--num_processes", "2", "--cpu", "-m", "higgs_train", *train_args(synth_manifest, tmp_path / "r", tiny_model)
    )
    assert (
        "error: the launcher was asked for 2 processes but 1 joined the run; on a machine without GPU use "
        "`accelerate launch --multi_gpu --num_processes 2` (gloo on the CPU)"
    ) in refused(cmd)


@pytest.mark.slow
def test_resume_with_another_world_size_warns_and_recomputes(synth_manifest, tiny_model, tmp_path):
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--save_steps", "2")
    code, log = finish(launch([*args, "--max_steps", "2"]))
    assert code == 0, log
    result = CliRunner().invoke(app, [*args, "--max_steps", "3"])
    assert result.exit_code == 0, result.output
    assert "warning: saved with 2 processes, resuming with 1" in result.output
    state = json.loads((tmp_path / "run/checkpoint-3/trainer_state.json").read_text())["progress"]
    assert state["world_size"] == 1 and state["samples_seen"] == 2 * 2 + 1
    assert state["micro_batches"] == 4 + 1  # 4 samples seen = 4 micro-batches of 1 at world size 1, then one more


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job_saves(synth_manifest, tiny_model, tmp_path):
    """What Slurm's scancel and systemd do: SIGTERM to the launcher and to each rank at once (each rank also gets
    the launcher's forwarded copy). One stop request: the run saves and leaves the STOPPED marker."""
    import psutil

    out = tmp_path / "run"
    proc = launch(train_args(synth_manifest, out, tiny_model, "--max_steps", "100000", "--save_steps", "100000"))
    wait_for_steps(out, 2)
    ranks = [p.pid for p in psutil.Process(proc.pid).children(recursive=True) if "higgs_train" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    for pid in [*ranks, proc.pid, *ranks]:  # every rank twice: directly and again, as torchrun forwards it
        os.kill(pid, signal.SIGTERM)
    code, log = finish(proc)
    saved = list(out.glob("checkpoint-*"))
    assert len(saved) == 1 and verify_checkpoint(saved[0]).ok, log
    assert (out / "STOPPED").is_file()  # (a pending duplicate may be merged by the kernel: no message to assert)


@pytest.mark.slow
def test_a_stop_save_slower_than_the_grace_publishes_the_adapter_in_time(synth_manifest, tiny_model, tmp_path):
    """SIGTERM to the launcher while rank 0's disk is slow (each file of the full save takes 2 s more, about 15 s in
    all; torchrun's grace is 30 s, here --stop_save_s 3 stands for it): the adapter-only checkpoint is published by
    the bound, the ranks stop cleanly (STOPPED), and a rerun on one process resumes from it."""
    out = tmp_path / "run"
    args = train_args(synth_manifest, out, tiny_model, "--max_steps", "100000", "--save_steps", "100000")
    proc = launch([*args, "--stop_save_s", "3"], env_extra={ENV: "mid_file:sleep:0"})
    wait_for_steps(out, 2)
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc)
    (saved,) = [p for p in out.glob("checkpoint-*") if ".tmp-" not in p.name]  # the dropped full folder is a tmp
    check = verify_checkpoint(saved)
    assert check.ok and check.kind == "fallback", log
    assert "the full save was not done within --stop_save_s of the stop signal" in log
    assert json.loads((out / "STOPPED").read_text())["latest"] == saved.name
    step = int(saved.name.split("-")[1])
    result = CliRunner().invoke(app, [*args[:-4], "--max_steps", str(step + 1), "--save_steps", "100000"])
    assert result.exit_code == 0, result.output
    assert f"{saved.name} is an adapter-only fallback: resuming with a fresh optimizer state" in result.output
    assert verify_checkpoint(out / f"checkpoint-{step + 1}").kind == "full"
    assert not list(out.glob("*.tmp-*"))  # the rerun removed the dropped folder


@pytest.mark.slow
def test_a_hung_peer_is_one_line_naming_the_timeout(synth_manifest, tiny_model, tmp_path):
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "20", "--dist_timeout_s", "5")
    code, log = finish(launch(args, env_extra={"HIGGS_TRAIN_FAILPOINT": "micro_batch@3:hang:1"}), timeout=180)
    assert code != 0
    assert "error: a collective did not finish within --dist_timeout_s 5: another process stopped answering" in log


@pytest.mark.slow
def test_an_encode_longer_than_the_collective_timeout_does_not_fail_the_run(synth_manifest, tiny_model, tmp_path):
    """Each rank encodes its 3 clips (6 s here: 3 shards of 1 clip, each slowed by 2 s) and waits for the other at a
    file barrier, not a collective: --dist_timeout_s 5 bounds the collectives of training, not data preparation."""
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "2", "--dist_timeout_s", "5")
    args += ["--cache_shard_clips", "1"]
    code, log = finish(launch(args, env_extra={ENV: "after_shard:sleep"}), timeout=240)
    assert code == 0, log
    assert log.count("done: step 2") == 1


@pytest.mark.slow
def test_ranks_started_with_different_settings_stop_naming_the_field(synth_manifest, tiny_model, tmp_path):
    """A node started with another --seed (a hand-written multi-node launch): every rank stops before training."""
    wrapper = tmp_path / "rank1_other_seed.py"
    wrapper.write_text(
        "import os, sys\n"
        "from higgs_train.cli import main\n"
        "if os.environ.get('RANK') == '1':\n"
        "    sys.argv += ['--seed', '7']\n"
        "main()\n"
    )
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--max_steps", "2")
    code, log = finish(launch(args, script=(str(wrapper),)), timeout=180)
    assert code != 0
    assert (
        "error: the processes were started with different settings: --seed differ between rank 0 and rank(s) [1] "
        "(e.g. --seed: 42 on rank 0, 7 on rank 1); start every process with the same command and files"
    ) in log
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def test_fsdp_version_1_is_refused_naming_the_fix(monkeypatch):
    """FSDP1 (flat parameters) is not supported: the accelerate config must say fsdp_version: 2. (FSDP1 cannot even
    start on the CPU, so the Accelerator it would build stands in here.)"""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    import higgs_train.distributed as distributed
    from higgs_train.config import build_config
    from higgs_train.errors import ConfigError

    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False, num_processes=1)
    monkeypatch.setattr(distributed, "_new_accelerator", lambda cfg, cpu, timeout: fsdp1)
    with pytest.raises(ConfigError, match=r"FSDP version 1, which higgs-train does not support; set fsdp_version: 2"):
        distributed.make_accelerator(build_config({}, require_data=False))


def test_main_only_runs_on_rank_0_alone_and_returns_there_only():
    from types import SimpleNamespace

    from higgs_train.distributed import main_only

    calls = []
    main = SimpleNamespace(is_main_process=True, num_processes=1)
    other = SimpleNamespace(is_main_process=False, num_processes=1)
    lock = object()
    assert main_only(main, lambda: calls.append(1) or lock) is lock
    assert main_only(other, lambda: calls.append(2) or lock) is None and calls == [1]

    def broken():
        raise ValueError("no tracker")

    with pytest.raises(ValueError, match="no tracker"):
        main_only(main, broken)
