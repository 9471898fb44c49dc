"""The DualFFN decoder layer without a host sync per layer.

transformers' `HiggsAudioV2DecoderLayer` routes audio and text positions to their own norms and MLPs with boolean
indexing and `masked_scatter`: 4 `nonzero` and 2 `masked_scatter` per layer, each a device-to-host sync, about 500
per 28-layer training step on a GPU. Here the positions are found once per forward (the mask object every layer
receives is the same) as index tensors, and each layer gathers and scatters with `index_select`/`index_copy`,
which compute the same rows with the same kernels in the same order: outputs and gradients are bitwise equal to
the native layer's (tested). Installed per layer instance; a layer whose structure is not the one this was
written against, or whose outputs or gradients on a probe differ from the native ones by a single bit, keeps the
native forward, with a warning.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable

import torch

PARTS = ("self_attn", "mlp", "audio_mlp", "input_layernorm", "post_attention_layernorm", "audio_input_layernorm")
PARTS += ("audio_post_attention_layernorm",)
ARGUMENTS = ("hidden_states", "position_embeddings", "attention_mask", "audio_token_mask", "position_ids")


class _Positions:
    """The audio and text positions of the forward in progress, as flat indices, keyed by the mask object."""

    def __init__(self):
        self.mask: torch.Tensor | None = None
        self.audio = self.text = None

    def of(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is not self.mask:  # a new forward: one nonzero for all layers
            flat = mask.reshape(-1)
            self.mask, self.audio, self.text = mask, flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
        return self.audio, self.text


def _forward(
    self,
    hidden_states,
    position_embeddings=None,
    attention_mask=None,
    audio_token_mask=None,
    position_ids=None,
    cache=None,
    use_cache=False,
    **kwargs,
):
    if audio_token_mask is None:  # generation steps after the prompt: the native path (no routing to save)
        return self._native_forward(
            hidden_states,
            position_embeddings,
            attention_mask,
            audio_token_mask,
            position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
    audio, text = self._positions.of(audio_token_mask.to(hidden_states.device))
    shape, size = hidden_states.shape, hidden_states.shape[-1]
    residual = hidden_states
    # the native layer's steps one for one (the same gathers, in the same order), so that autograd sums the same
    # terms in the same order: indices instead of masks, nothing else
    flat = hidden_states.reshape(-1, size)
    flat = flat.index_copy(0, audio, self.audio_input_layernorm(flat.index_select(0, audio)).to(flat.dtype))
    flat = flat.index_copy(0, text, self.input_layernorm(flat.index_select(0, text)).to(flat.dtype))
    hidden_states, _ = self.self_attn(
        hidden_states=flat.view(shape),
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    flat = (residual + hidden_states).reshape(-1, size)
    text_states = self.post_attention_layernorm(flat.index_select(0, text))
    audio_states = self.audio_post_attention_layernorm(flat.index_select(0, audio))
    text_states = self.mlp(text_states)
    flat = flat.index_copy(0, text, flat.index_select(0, text) + text_states.to(flat.dtype))
    audio_states = self.audio_mlp(audio_states)
    flat = flat.index_copy(0, audio, flat.index_select(0, audio) + audio_states.to(flat.dtype))
    return flat.view(shape)


def _fits(layer) -> str | None:
    """Why this layer is not the structure the fast forward was written for, or None."""
    missing = [p for p in PARTS if not hasattr(layer, p)]
    if missing:
        return f"it has no {', '.join(missing)}"
    params = list(inspect.signature(type(layer).forward).parameters)[1:]
    if tuple(params[: len(ARGUMENTS)]) != ARGUMENTS:
        return f"its forward takes ({', '.join(params)})"
    return None


def _probe_equal(layer, fast) -> bool:
    """The native and the fast forward on a small probe (both kinds of positions, a gradient): bit for bit."""
    weight = layer.input_layernorm.weight
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, weight.shape[0], generator=gen).to(weight.device, weight.dtype)
    mask = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 0, 0, 1, 1, 1]], dtype=torch.bool, device=weight.device)
    head_dim = layer.self_attn.head_dim
    cos = torch.ones(2, 6, head_dim, device=weight.device, dtype=weight.dtype)
    rotary = (cos, torch.zeros_like(cos))
    outs = []
    for forward in (layer._native_forward, fast):
        x = hidden.clone().requires_grad_(True)
        y = forward(x, rotary, None, mask.clone(), None)
        y = y[0] if isinstance(y, tuple) else y
        (grad,) = torch.autograd.grad(y.float().square().sum(), x)
        outs.append((y.detach(), grad))
    return all(torch.equal(a, b) for a, b in zip(outs[0], outs[1], strict=True))


def install(model: torch.nn.Module, say: Callable[[str], None] = print) -> int:
    """Give every DualFFN decoder layer of `model` the sync-free forward; returns how many got it."""
    layers = [m for m in model.modules() if type(m).__name__ == "HiggsAudioV2DecoderLayer"]
    positions = _Positions()  # shared: the first layer of a forward finds them, the others reuse
    done = 0
    for layer in layers:
        problem = _fits(layer)
        layer._native_forward = layer.forward
        fast = types.MethodType(_forward, layer)
        layer._positions = positions
        if problem is None and done == 0 and not _probe_equal(layer, fast):
            problem = "its outputs differ from the native layer's on a probe"
        if problem is not None:
            say(
                f"warning: the DualFFN layer of this transformers is not the one higgs-train knows ({problem}); "
                "training with transformers' own layer (one host sync per layer)"
            )
            return 0
        layer.forward = fast
        done += 1
    return done
