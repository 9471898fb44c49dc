"""A diverged run stops at the step with one line and publishes nothing of it; a collapsed one is named."""

from __future__ import annotations

import pytest

from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.cli import app
from higgs_train.health import Collapse, NonFinite, check_finite
from tests.conftest import runner, train_args


def _run(manifest, out, model, lr):
    return runner.invoke(app, train_args(manifest, out, model, "--max_steps", "4", "--save_steps", "1", "--lr", lr))


def test_a_nan_loss_stops_the_run_at_its_step_naming_the_last_good_checkpoint(synth_manifest, tiny_model, tmp_path):
    out = tmp_path / "run"
    result = _run(synth_manifest, out, tiny_model, "1e20")
    assert result.exit_code == 5
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith("error: step 2: the loss is nan: training diverged, and nothing of this step was applied")
    assert f"the last good checkpoint is {out / 'checkpoint-1'}, where a rerun resumes" in line and "--lr" in line
    assert "disk" not in result.output and len(result.output) < 3000  # not a save failure blamed on the disk
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert verify_checkpoint(out / "checkpoint-1").ok


def test_an_update_that_overflows_is_the_same_one_line_not_a_traceback(synth_manifest, tiny_model, tmp_path):
    result = _run(synth_manifest, tmp_path / "run", tiny_model, "1e38")
    assert result.exit_code == 5 and "step 1: the update overflows float32: the learning rate is 1e+38" in result.output
    assert "no checkpoint was saved before it, so a rerun starts again" in result.output
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_collapsed_run_is_warned_about_once(synth_manifest, tiny_model, tmp_path):
    result = _run(synth_manifest, tmp_path / "run", tiny_model, "1e6")
    assert result.exit_code == 0
    warnings = [x for x in result.output.splitlines() if "training has collapsed" in x]
    assert len(warnings) == 1 and warnings[0].startswith("warning: step 4: the gradient norm has been exactly 0")


@pytest.mark.parametrize(
    "loss, norm, text", [(float("nan"), 1.0, None), (1.0, float("inf"), None), (1.0, 1.0, float("nan"))]
)
def test_every_non_finite_value_of_a_step_is_caught(loss, norm, text):
    with pytest.raises(NonFinite):
        check_finite(loss, norm, text)
    check_finite(1.0, None, None)


def test_a_frozen_loss_is_a_collapse_too():
    watch = Collapse()
    said = [watch.observe(step, 2.5, 0.1) for step in range(1, 6)]
    assert said[:3] == [None] * 3 and "the loss has not moved for 3 steps" in said[3] and said[4] is None
