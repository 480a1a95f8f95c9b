"""``easyanimate make-tiny-model``: a complete random-weight model folder, small enough to train on a CPU.

Same layout and classes as the published folders (diffusers' layout, or EasyAnimate's original one with
``--layout original``), with tokenizers built offline by ``tokenizers`` (nothing is downloaded). The recipe per
version is data in ``RECIPES``; building takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLMagvit, DDPMScheduler, EasyAnimateTransformer3DModel, \
    FlowMatchEulerDiscreteScheduler
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import BertConfig, BertTokenizer, Qwen2Tokenizer, Qwen2VLConfig, T5Config, T5Tokenizer

from easyanimate.models import original
from easyanimate.models.spec import TEXT_ENCODER_LAYOUTS, EncoderKind
from easyanimate.models.text import MODEL_CLASSES

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 4
HIDDEN = {"qwen2_vl": 32, "bert": 32, "t5": 48}  # text widths, also the fixtures' text_embed_dim(_t5)
WORDS = ("a the of and in on with to is at by from video shows person man woman child dog cat car bird tree "
         "road street city park beach sea sky sun cloud rain snow light dark red green blue white black walks "
         "runs dances jumps turns moves slowly quickly camera pans zooms scene view close up wide shot background "
         "you are helpful assistant user system").split()
# Our own minimal Qwen-style chat template: default system message, text parts of each message, generation prompt.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class Recipe:
    multi_text_encoder: bool
    llm: bool
    conditions: int           # latent blocks the transformer takes: noisy + control (+ ref)
    scheduler: dict


RECIPES = {
    "v5.1": Recipe(False, True, 3, {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                    "shift": 1.0}),
    "v5": Recipe(True, False, 2, {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                                  "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                  "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                                  "timestep_spacing": "trailing", "clip_sample": False}),
}
SCHEDULER_CLASSES = {"FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
                     "DDPMScheduler": DDPMScheduler}


# --- tokenizers ----------------------------------------------------------------------------------------------
def qwen_tokenizer() -> Qwen2Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([" ".join(WORDS)] * 4, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    state = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=[tuple(m) for m in state["merges"]],
                               unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIALS], special_tokens=True)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    return tokenizer


def bert_tokenizer() -> BertTokenizer:
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *string.digits,
              *string.ascii_lowercase, *(f"##{c}" for c in string.ascii_lowercase + string.digits), *WORDS]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    return BertTokenizer(vocab=vocab, model_max_length=512)


def t5_tokenizer() -> T5Tokenizer:
    pieces = ["<pad>", "</s>", "<unk>", "▁", *(f"▁{w}" for w in WORDS), *string.ascii_lowercase,
              *string.digits, *string.punctuation]
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(dict.fromkeys(pieces))]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


TOKENIZERS = {"qwen2_vl": qwen_tokenizer, "bert": bert_tokenizer, "t5": t5_tokenizer}


# --- models --------------------------------------------------------------------------------------------------
def _text_config(kind: EncoderKind, tokenizer):
    vocab, width = len(tokenizer), HIDDEN[kind]
    if kind == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=2 * width, max_position_embeddings=512)
    if kind == "t5":
        return T5Config(vocab_size=vocab, d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=2,
                        num_heads=2, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>"),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=width, num_heads=2, mlp_ratio=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def tiny_transformer(recipe: Recipe) -> EasyAnimateTransformer3DModel:
    return EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=recipe.conditions * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, patch_size=2, sample_width=90, sample_height=60, num_layers=2,
        mmdit_layers=2, time_embed_dim=16, text_embed_dim=HIDDEN["bert" if recipe.multi_text_encoder else
                                                                  "qwen2_vl" if recipe.llm else "t5"],
        text_embed_dim_t5=HIDDEN["t5"] if recipe.multi_text_encoder else None,
        enable_text_attention_mask=recipe.llm)


def tiny_vae() -> AutoencoderKLMagvit:
    return AutoencoderKLMagvit(latent_channels=LATENT_CHANNELS, block_out_channels=[8, 8, 8, 8],
                               layers_per_block=1, norm_num_groups=4)


# --- writing -------------------------------------------------------------------------------------------------
def _write_denoiser(out: Path, recipe: Recipe, layout: str) -> dict[str, list[str]]:
    transformer, vae = tiny_transformer(recipe), tiny_vae()
    if layout == "diffusers":
        transformer.save_pretrained(out / "transformer")
        vae.save_pretrained(out / "vae")
    else:
        original.save_transformer_original(transformer, out / "transformer")
        original.save_vae_original(vae, out / "vae")
    return {"transformer": ["diffusers", type(transformer).__name__], "vae": ["diffusers", type(vae).__name__]}


def _write_text_encoders(out: Path, recipe: Recipe) -> dict[str, list[str]]:
    index = {}
    for slot in TEXT_ENCODER_LAYOUTS[(recipe.multi_text_encoder, recipe.llm)]:
        tokenizer = TOKENIZERS[slot.kind]()
        model = MODEL_CLASSES[slot.kind](_text_config(slot.kind, tokenizer)).eval()
        tokenizer.save_pretrained(out / slot.tokenizer_subfolder)
        model.save_pretrained(out / slot.encoder_subfolder)
        index[slot.tokenizer_subfolder] = ["transformers", type(tokenizer).__name__]
        index[slot.encoder_subfolder] = ["transformers", type(model).__name__]
    return index


def _write_scheduler(out: Path, recipe: Recipe) -> dict[str, list[str]]:
    settings = dict(recipe.scheduler)
    cls = SCHEDULER_CLASSES[settings.pop("_class_name")]
    cls(**settings).save_pretrained(out / "scheduler")
    return {"scheduler": ["diffusers", cls.__name__]}


def make_tiny_model(version: str, out: str | Path, layout: str = "diffusers", *, seed: int = 0) -> Path:
    """Write a tiny random-weight model folder for ``version`` ("v5.1" or "v5") at ``out``; returns ``out``."""
    if version not in RECIPES:
        raise ValueError(f"version must be one of {sorted(RECIPES)}, got {version!r}")
    if layout not in ("diffusers", "original"):
        raise ValueError(f"layout must be 'diffusers' or 'original', got {layout!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    recipe = RECIPES[version]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        index = {**_write_denoiser(out, recipe, layout), **_write_text_encoders(out, recipe),
                 **_write_scheduler(out, recipe)}
    if layout == "diffusers":
        # EasyAnimateControlPipeline loads the single-encoder (V5.1) folder; diffusers has no two-encoder pipeline.
        index = {"_class_name": "EasyAnimateControlPipeline", "_diffusers_version": _diffusers_version(), **index}
        (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    logger.info("wrote tiny %s model (%s layout) to %s", version, layout, out)
    return out


def _diffusers_version() -> str:
    import diffusers
    return diffusers.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easyanimate make-tiny-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", choices=sorted(RECIPES), default="v5.1")
    parser.add_argument("--layout", choices=["diffusers", "original"], default="diffusers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_tiny_model(args.version, args.out, args.layout, seed=args.seed)
    print(args.out)
    return 0
