"""The released architecture trains: the whole depth on the meta device, a width-true 2-layer slice for real."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO


def _script():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("full_shape", REPO / "scripts" / "full_shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_released_shape_whole_depth_and_width_true_slice():
    script = _script()
    whole = script.whole_depth()
    assert whole["layers"] == 28 and whole["lora_targets"] == 28 * 10  # q,k,v,o + gate,up,down in both FFNs
    assert 5.8e9 < whole["total_params"] < 5.82e9 and whole["lora_params"] == 39_452_672
    part = script.slice_run()
    assert part["lora_targets"] == 20 and part["verify_ok"] and part["resume_bitwise_equal"]
    assert abs(part["checkpoint_bytes"] - part["checkpoint_bytes_estimate"]) < 0.01 * part["checkpoint_bytes"]
    assert all(loss == loss and loss < 2 * part["chance_loss"] for loss in part["losses"])  # finite, sane
