"""The sync-free DualFFN: bitwise the native layer (outputs and gradients, padded rows, with LoRA), one pair of
nonzero per forward instead of ten syncing ops per layer, and transformers' own layer kept for another structure."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from higgs_train import dual_ffn
from higgs_train.config import build_config
from higgs_train.data.collate import TokenLayout, build_example, collate
from higgs_train.data.manifest import Sample, Turn
from higgs_train.model import apply_lora
from tests.conftest import load_base


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _batch(base):
    layout = TokenLayout.from_processor(base.processor, base.model.config.num_codebooks)

    def example(words: int, frames: int, seed: int):
        turns = (Turn("system", text="Speak."), Turn("user", text="hello " * words), Turn("assistant", audio="a"))
        codes = np.random.default_rng(seed).integers(0, 60, (layout.num_codebooks, frames))
        return build_example(Sample("x:1", turns), {"a": codes}, layout)

    batch = collate([example(2, 7, 0), example(6, 3, 1)], layout)  # rows of other lengths: padding
    return {k: v for k, v in batch.items() if k not in ("labels", "text_labels")}


def _models(tiny_model):
    cfg = build_config({"train_manifest": "m.jsonl", "output_dir": "o", "lora_dropout": 0.0})
    native = apply_lora(load_base(str(tiny_model)).model, cfg)
    fast = apply_lora(load_base(str(tiny_model)).model, cfg)
    fast.load_state_dict(native.state_dict())
    assert dual_ffn.install(fast, print) == fast.base_model.config.num_hidden_layers
    return native.train(), fast.train()


def test_outputs_and_gradients_are_bitwise_the_native_layers(tiny_model, base):
    native, fast = _models(tiny_model)
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: move it, so every adapter weight is on the gradient's path
        for model in (native, fast):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    inputs = _batch(base)
    out = [model(**inputs).logits for model in (native, fast)]
    assert torch.equal(out[0], out[1])
    for o in out:
        o.float().square().mean().backward()
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in (native, fast)]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_the_positions_are_found_once_per_forward_not_in_every_layer(tiny_model, base):
    native, fast = _models(tiny_model)
    inputs = _batch(base)
    counts = []
    for model in (native, fast):
        with torch.no_grad(), CountOps() as ops:
            model(**inputs)
        counts.append(ops.counts)
    layers = native.base_model.config.num_hidden_layers

    def syncs(c):  # the ops whose output size the host must learn: boolean indexing, masked_scatter, nonzero
        return sum(c.get(op, 0) for op in ("index", "index_put_", "masked_scatter", "nonzero"))

    assert syncs(counts[0]) - syncs(counts[1]) == 10 * layers - 2  # ten per native layer; one nonzero pair for all
    assert counts[1]["nonzero"] == 2 and counts[1]["index_select"] == 6 * layers


def test_a_layer_of_another_structure_keeps_transformers_forward(tiny_model):
    class HiggsAudioV2DecoderLayer(torch.nn.Module):  # a stand-in: a later transformers' layer, say
        def forward(self, hidden_states, token_type_mask=None):
            return hidden_states

    holder = torch.nn.Sequential(HiggsAudioV2DecoderLayer())
    native = holder[0].forward
    said = []
    assert dual_ffn.install(holder, said.append) == 0
    assert holder[0].forward == native and "training with transformers' own layer" in said[0]
