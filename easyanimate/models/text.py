"""Frozen text encoders: captions -> the embeddings the transformer takes, exactly as EasyAnimate trains them.

- Qwen2-VL (V5.1): each caption is one user chat message; the tokenizer's chat template is applied with the
  generation prompt; right padding/truncation to ``max_length`` tokens (template included); the embedding is the
  second-to-last hidden state, computed with the attention mask (required).
- Bert / T5 (V5): ``add_special_tokens=False`` when they are a pair (True for a lone T5), padded to
  min(model_max_length, max_length); the last hidden state, with the mask only when the transformer's
  ``enable_text_attention_mask`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertModel, Qwen2VLForConditionalGeneration, T5EncoderModel

from easyanimate.models.spec import EncoderKind, EncoderSlot, ModelSpec
from easyanimate.models.weights import StrictLoadError

MODEL_CLASSES = {"qwen2_vl": Qwen2VLForConditionalGeneration, "bert": BertModel, "t5": T5EncoderModel}


@dataclass
class TextEmbeddings:
    encoder_hidden_states: torch.Tensor
    encoder_attention_mask: torch.Tensor
    encoder_hidden_states_t5: torch.Tensor | None = None
    encoder_attention_mask_t5: torch.Tensor | None = None


def load_pretrained_strict(cls, folder: Path, dtype: torch.dtype):
    """transformers' from_pretrained, refusing any missing, unexpected or mis-shaped tensor."""
    model, info = cls.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise StrictLoadError(f"{folder}: weights do not match {cls.__name__}; refusing a partial load: "
                              + "; ".join(f"{k}: {sorted(map(str, v))[:20]}" for k, v in problems.items()))
    return model


class _Encoder:
    """One tokenizer + encoder pair."""

    def __init__(self, kind: EncoderKind, tokenizer, model, *, max_length: int, add_special_tokens: bool,
                 use_mask: bool):
        self.kind, self.tokenizer, self.model = kind, tokenizer, model
        self.add_special_tokens, self.use_mask = add_special_tokens, use_mask
        self.max_length = max_length if kind == "qwen2_vl" else min(tokenizer.model_max_length, max_length)

    def _tokenize(self, prompts: list[str]):
        if self.kind == "qwen2_vl":
            texts = [self.tokenizer.apply_chat_template(
                [{"role": "user", "content": [{"type": "text", "text": p}]}], tokenize=False,
                add_generation_prompt=True) for p in prompts]
            return self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                                  padding_side="right", return_attention_mask=True, return_tensors="pt")
        return self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                              add_special_tokens=self.add_special_tokens, return_attention_mask=True,
                              return_tensors="pt")

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        tokens = self._tokenize(prompts).to(device)
        mask = tokens.attention_mask
        if self.kind == "qwen2_vl":
            out = self.model(input_ids=tokens.input_ids, attention_mask=mask, output_hidden_states=True)
            return out.hidden_states[-2], mask
        out = self.model(tokens.input_ids, attention_mask=mask if self.use_mask else None)
        return out[0], mask


class TextEncoder:
    """The model's text encoder(s), frozen. ``encode`` returns what the transformer's forward takes."""

    def __init__(self, encoders: list[_Encoder], *, offload: bool = False):
        self.encoders = encoders
        self.offload = offload

    @classmethod
    def from_folder(cls, folder: str | Path, spec: ModelSpec, *, device, dtype: torch.dtype,
                    max_length: int = 256, use_attention_mask: bool = True, offload: bool = False) -> "TextEncoder":
        slots = spec.text_encoders
        encoders = [_load_encoder(Path(folder), slot, dtype, max_length=max_length, use_mask=use_attention_mask,
                                  paired=len(slots) > 1) for slot in slots]
        text_encoder = cls(encoders, offload=offload)
        text_encoder.to("cpu" if offload else device)
        return text_encoder

    def to(self, device) -> "TextEncoder":
        for encoder in self.encoders:
            encoder.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str], device) -> TextEmbeddings:
        if self.offload:
            self.to(device)
        try:
            outputs = [encoder(list(prompts)) for encoder in self.encoders]
        finally:
            if self.offload:
                self.to("cpu")
        (states, mask), *rest = [(s.to(device), m.to(device)) for s, m in outputs]
        second = rest[0] if rest else (None, None)
        return TextEmbeddings(states, mask, *second)


def _load_encoder(folder: Path, slot: EncoderSlot, dtype: torch.dtype, *, max_length: int, use_mask: bool,
                  paired: bool) -> _Encoder:
    for sub in (slot.encoder_subfolder, slot.tokenizer_subfolder):
        if not (folder / sub).is_dir():
            raise StrictLoadError(f"{folder}: no {sub}/ folder; this model YAML needs a {slot.kind} text encoder "
                                  f"in {slot.encoder_subfolder}/ and its tokenizer in {slot.tokenizer_subfolder}/.")
    if slot.kind == "qwen2_vl" and not use_mask:
        raise StrictLoadError(f"{folder}: a Qwen2-VL text encoder needs enable_text_attention_mask: true "
                              "(EasyAnimate's trainer refuses it without the mask too).")
    tokenizer = AutoTokenizer.from_pretrained(folder / slot.tokenizer_subfolder)
    if slot.kind == "qwen2_vl" and not tokenizer.chat_template:
        raise StrictLoadError(f"{folder / slot.tokenizer_subfolder}: the Qwen2 tokenizer has no chat template.")
    model = load_pretrained_strict(MODEL_CLASSES[slot.kind], folder / slot.encoder_subfolder, dtype)
    model.requires_grad_(False).eval()
    return _Encoder(slot.kind, tokenizer, model, max_length=max_length, add_special_tokens=not paired,
                    use_mask=use_mask)
