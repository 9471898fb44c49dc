"""Samples + codes -> model inputs and training-ready labels.

The processor's own labels are not fit for training (see docs): it never labels end-of-audio, labels every
audio segment including a voice-cloning reference, and labels the prompt text. Here, as Boson's recipe labels:
- audio: the target clip (the last assistant audio; every assistant clip with --label_audio all), as the
  delay-patterned stream [codes..., EOS]: each codebook's real end-of-audio code is labelled, the stream-bos and
  the delay pattern's EOS padding (which generation forces anyway) are not; context audio is not;
- text (used with --text_loss_weight): the labelled assistant turns' markup, `<|audio_out_bos|>` before the clip
  and `<|audio_eos|>` and the turn's end (`<|eot_id|>`/`<|eom_id|>`) after it; never the system prompt, scene,
  user text or headers;
- labels are per position (B, L, K), so the loss needs no alignment with the frame tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from higgs_train.data.manifest import Sample
from higgs_train.errors import ManifestError

IGNORE = -100


@dataclass(frozen=True)
class TokenLayout:
    """The ids that lay audio out in the token sequence, read from the processor and model config."""

    tokenizer: object
    chat_template: str
    audio_token: str
    audio_token_id: int
    delay_token_id: int
    pad_token_id: int
    stream_bos: int
    stream_eos: int
    num_codebooks: int
    audio_bos_id: int = -1  # <|audio_out_bos|>: opens an assistant clip
    turn_end_ids: frozenset[int] = frozenset()  # <|eot_id|>, <|eom_id|>: end a turn
    label_all_audio: bool = False  # --label_audio all: every assistant clip labelled, not the last only

    @classmethod
    def from_processor(cls, processor, num_codebooks: int, label_audio: str = "last") -> TokenLayout:
        vocab = processor.tokenizer.get_vocab()
        return cls(
            tokenizer=processor.tokenizer,
            chat_template=processor.chat_template,
            audio_token=processor.audio_token,
            audio_token_id=processor.audio_token_id,
            delay_token_id=processor.audio_delay_token_id,
            pad_token_id=processor.tokenizer.pad_token_id,
            stream_bos=processor.audio_stream_bos_id,
            stream_eos=processor.audio_stream_eos_id,
            num_codebooks=num_codebooks,
            audio_bos_id=vocab.get("<|audio_out_bos|>", -1),
            turn_end_ids=frozenset(vocab[t] for t in ("<|eot_id|>", "<|eom_id|>") if t in vocab),
            label_all_audio=label_audio == "all",
        )


@dataclass
class Example:
    """One tokenized sample: input ids (L,), audio frames (F, K) for every audio placeholder, labels (L, K) and
    text labels (L,)."""

    input_ids: np.ndarray
    audio_frames: np.ndarray
    labels: np.ndarray
    text_labels: np.ndarray

    @property
    def num_label_codes(self) -> int:
        return int((self.labels != IGNORE).sum())


def delay_pattern(codes: np.ndarray, bos: int, eos: int) -> np.ndarray:
    """(K, T) codes -> (T + K + 1, K) frames: [bos, codes, eos] with codebook k delayed by k frames."""
    k_count, t = codes.shape
    frames = np.full((k_count, t + k_count + 1), eos, dtype=np.int64)
    for k in range(k_count):
        frames[k, :k] = bos
        frames[k, k] = bos
        frames[k, k + 1 : k + 1 + t] = codes[k]
    return frames.T.copy()


def target_labels(codes: np.ndarray, eos: int) -> np.ndarray:
    """Labels for a target clip's frames: its codes and each codebook's first EOS; everything else ignored."""
    k_count, t = codes.shape
    labels = np.full((k_count, t + k_count + 1), IGNORE, dtype=np.int64)
    for k in range(k_count):
        labels[k, k + 1 : k + 1 + t] = codes[k]
        labels[k, k + 1 + t] = eos  # end-of-audio: the processor never labels it, so the model never learns to stop
    return labels.T.copy()


def conversation(sample: Sample) -> list[dict]:
    """The sample as chat-template messages; audio items carry their path."""
    messages = []
    for turn in sample.turns:
        item = {"type": "audio", "path": turn.audio} if turn.audio else {"type": "text", "text": turn.text}
        if messages and messages[-1]["role"] == turn.role:
            messages[-1]["content"].append(item)
        else:
            messages.append({"role": turn.role, "content": [item]})
    return messages


def text_pieces(sample: Sample, layout: TokenLayout) -> list[np.ndarray]:
    """The token ids of the rendered chat template's text around each audio placeholder (clips + 1 pieces)."""
    text = layout.tokenizer.apply_chat_template(
        conversation(sample), chat_template=layout.chat_template, tokenize=False
    )
    pieces = text.split(layout.audio_token)
    if len(pieces) != len(sample.audio_paths) + 1:
        raise ManifestError(
            f"{sample.source}: the text contains the reserved token {layout.audio_token}; remove it from the row"
        )
    ids = layout.tokenizer(pieces, add_special_tokens=False)["input_ids"]
    return [np.asarray(piece, dtype=np.int32) for piece in ids]


def example_length(piece_lengths, clip_frames, num_codebooks: int) -> int:
    """Tokens of the whole example: its text pieces, and T + K + 1 positions per clip of T frames (stream bos,
    codes, eos and the delay pattern)."""
    return int(sum(piece_lengths)) + sum(int(t) + num_codebooks + 1 for t in clip_frames)


def assemble(pieces: list[np.ndarray], clips: list[np.ndarray], layout: TokenLayout) -> Example:
    """An example from its text pieces' token ids and its clips' codes (K, T): each placeholder expanded to the
    clip's delay-patterned frames; the target clip (every assistant clip with label_all_audio) labelled, with its
    turn's markup as text labels."""
    ids: list[np.ndarray] = []
    frames, label_rows, text_spans, length = [], [], [], 0
    k = layout.num_codebooks
    labelled = range(len(clips)) if layout.label_all_audio else range(len(clips) - 1, len(clips))
    for i, piece in enumerate(pieces):
        if i - 1 in labelled:  # after a labelled clip: its <|audio_eos|> through the turn's end
            ends = np.flatnonzero(np.isin(piece, list(layout.turn_end_ids)))
            text_spans.append((length, length + (int(ends[0]) + 1 if len(ends) else min(1, len(piece)))))
        ids.append(piece.astype(np.int64))
        length += len(piece)
        if i == len(clips):
            break
        clip = clips[i]
        clip_frames = delay_pattern(clip, layout.stream_bos, layout.stream_eos)
        n = len(clip_frames)
        if i in labelled:
            label_rows.append((length, target_labels(clip, layout.stream_eos)))
            if len(piece) and piece[-1] == layout.audio_bos_id:
                text_spans.append((length - 1, length))
        placeholders = np.full(n, layout.audio_token_id, dtype=np.int64)
        placeholders[n - (k - 1) :] = layout.delay_token_id
        ids.append(placeholders)
        length += n
        frames.append(clip_frames)
    input_ids = np.concatenate(ids)
    labels = np.full((length, k), IGNORE, dtype=np.int64)
    for start, clip_labels in label_rows:
        labels[start : start + len(clip_labels)] = clip_labels
    text_labels = np.full(length, IGNORE, dtype=np.int64)
    for start, end in text_spans:
        text_labels[start:end] = input_ids[start:end]
    return Example(input_ids, np.concatenate(frames), labels, text_labels)


def build_example(sample: Sample, codes: dict[str, np.ndarray], layout: TokenLayout) -> Example:
    """Tokenize one sample: render the chat template, expand each audio placeholder to its frames, label the target."""
    return assemble(text_pieces(sample, layout), [codes[p] for p in sample.audio_paths], layout)


def collate(examples: list[Example], layout: TokenLayout, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into a batch for `HiggsAudioV2ForConditionalGeneration.forward`; the sequence
    and frame lengths padded up to a multiple of `multiple`."""
    b = len(examples)
    seq = -(-max(len(e.input_ids) for e in examples) // multiple) * multiple
    n_frames = -(-max(len(e.audio_frames) for e in examples) // multiple) * multiple
    k = layout.num_codebooks
    input_ids = torch.full((b, seq), layout.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, seq), dtype=torch.long)
    audio_input_ids = torch.full((b, n_frames, k), layout.stream_eos, dtype=torch.long)
    audio_mask = torch.zeros((b, n_frames), dtype=torch.bool)
    labels = torch.full((b, seq, k), IGNORE, dtype=torch.long)
    text_labels = torch.full((b, seq), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n, f = len(e.input_ids), len(e.audio_frames)
        input_ids[i, :n] = torch.from_numpy(e.input_ids)
        attention_mask[i, :n] = 1
        audio_input_ids[i, :f] = torch.from_numpy(e.audio_frames)
        audio_mask[i, :f] = True
        labels[i, :n] = torch.from_numpy(e.labels)
        text_labels[i, :n] = torch.from_numpy(e.text_labels)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "audio_input_ids": audio_input_ids,
        "audio_input_ids_mask": audio_mask,
        "labels": labels,
        "text_labels": text_labels,  # used only with --text_loss_weight
    }


def pack(examples: list[Example], layout: TokenLayout) -> dict[str, torch.Tensor]:
    """--packing: a list of examples as ONE sequence (batch of 1, no padding): `position_ids` restart at 0 for each
    row and there is NO `attention_mask`, from which transformers' masking builds a block-diagonal causal mask
    (an attention mask, even all ones, turns that detection off and rows would attend to each other). Labels are
    each row's own: every row's first label is ignored, so no loss term predicts across a row boundary."""
    input_ids = torch.from_numpy(np.concatenate([e.input_ids for e in examples]))[None]
    frames = torch.from_numpy(np.concatenate([e.audio_frames for e in examples]))[None]
    labels = torch.from_numpy(np.concatenate([e.labels for e in examples]))[None]
    if any((e.labels[0] != IGNORE).any() for e in examples):
        raise ValueError("a packed row starts with a labelled position: its loss would cross a row boundary")
    return {
        "input_ids": input_ids,
        "position_ids": torch.from_numpy(np.concatenate([np.arange(len(e.input_ids)) for e in examples]))[None],
        "audio_input_ids": frames,
        "audio_input_ids_mask": torch.ones(frames.shape[:2], dtype=torch.bool),
        "labels": labels,
        "text_labels": torch.from_numpy(np.concatenate([e.text_labels for e in examples]))[None],
    }


def positions(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, tokens computed) of a padded or packed batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
    return batch["input_ids"].numel(), batch["input_ids"].numel()
