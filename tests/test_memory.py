"""The memory plan: per-rank state bytes per layout, activations counted at real shapes without allocating them
(extrapolated per block, checked against a full count), and the fit verdict for the GPU a request names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from easyanimate import activations, memory, sizing
from easyanimate.config import parse_args

REPO = Path(__file__).resolve().parents[1]
P = 12_000_000_000


def _terms(state: sizing.TrainingState) -> dict[str, float]:
    return {name: size for name, size, _ in sizing.state_terms(state)}


def test_zero2_on_8_ranks_holds_bf16_module_and_one_eighth_of_master_moments_and_ema():
    layout = sizing.Layout(nodes=1, gpus_per_node=8)
    terms = _terms(sizing.TrainingState(params=P, trainable=P, layout=layout, ema="sharded",
                                        reduce_bucket_elements=0))
    assert terms["weights"] == 2 * P
    assert terms["fp32 master weights"] == 4 * P / 8
    assert terms["optimizer"] == 8 * P / 8
    assert terms["gradients"] == 6 * P / 8
    assert terms["EMA"] == 4 * P / 8          # was a whole fp32 copy: 4 * P on every GPU


def test_without_deepspeed_fp32_needs_twice_the_bytes_of_the_originals_bf16_footprint():
    layout = sizing.Layout(nodes=1, gpus_per_node=8, deepspeed=False)
    fp32 = sum(_terms(sizing.TrainingState(params=P, trainable=P, layout=layout)).values())
    bf16 = sum(_terms(sizing.TrainingState(params=P, trainable=P, layout=layout,
                                           master_dtype_bytes=sizing.BF16)).values())
    eight_bit = sum(_terms(sizing.TrainingState(params=P, trainable=P, layout=layout,
                                                eight_bit_adam=True)).values())
    assert fp32 == 18 * P       # weights, gradients, moments in fp32 + autocast's bf16 copies
    assert bf16 == 8 * P        # the original: bf16 weights, gradients and moments (one H200 for 12B)
    assert eight_bit == 12 * P


@pytest.mark.parametrize("text,gpu", [("gpu:h100:8", "h100"), ("h200&ib", "h200"), ("gpu-a100-80gb", "a100-80gb"),
                                      ("a100", "a100"), ("B200", "b200"), ("batch", None)])
def test_gpu_named_in_a_request_is_found(text, gpu):
    assert sizing.find_gpu(None, text) == gpu


def test_per_block_extrapolation_matches_a_full_count_on_a_small_model():
    kwargs = dict(num_attention_heads=4, attention_head_dim=16, in_channels=12, out_channels=4, patch_size=2,
                  sample_width=90, sample_height=60, num_layers=4, mmdit_layers=2, text_embed_dim=32,
                  time_embed_dim=32, text_embed_dim_t5=None)
    batch = activations.TransformerBatch(batch=2, latent_frames=2, latent_height=8, latent_width=8, text_tokens=8)
    for checkpointing in (False, True):
        full = activations.transformer_peak(kwargs, batch, checkpointing=checkpointing)
        extrapolated = activations.transformer_activations(kwargs, batch, checkpointing=checkpointing)
        assert extrapolated == pytest.approx(full, rel=1e-3), checkpointing  # measured: equal
    assert activations.transformer_activations(kwargs, batch, checkpointing=True) < \
        activations.transformer_activations(kwargs, batch, checkpointing=False) / 2


def test_activation_count_allocates_nothing_at_12b_widths():
    import resource
    kwargs = {**dict(num_attention_heads=48, attention_head_dim=64, in_channels=48, out_channels=16, patch_size=2,
                     sample_width=90, sample_height=60, text_embed_dim=3584, time_embed_dim=512,
                     text_embed_dim_t5=None), "num_layers": 1, "mmdit_layers": 1}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = activations.transformer_peak(kwargs, activations.TransformerBatch(1, 13, 64, 64, 256))
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / sizing.GIB
    assert peak > 2 * sizing.GIB and grown_gib < 0.5   # gigabytes counted, none allocated


@pytest.fixture(scope="module")
def seed_plan():
    """The seed's V5.1 ZeRO-2 job (token budget 512^2 x 49, gradient checkpointing) on 1 x 8 GPUs."""
    cfg = parse_args(["--pretrained_model_name_or_path", "models/absent", "--config_path",
                      str(REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml"), "--image_sample_size=1024",
                      "--video_sample_size=256", "--token_sample_size=512", "--video_sample_n_frames=49",
                      "--train_batch_size=1", "--gradient_checkpointing", "--mixed_precision=bf16",
                      "--random_hw_adapt", "--training_with_video_token_length", "--enable_bucket",
                      "--vae_mini_batch=1", "--use_deepspeed", "--use_ema", "--seed=42"])
    return memory.plan(memory.Job(cfg=cfg, nodes=1, gpus_per_node=8, deepspeed=True,
                                  zero=memory.zero_config(REPO / "configs" / "zero_stage2_config.json")))


def test_seed_job_plan_uses_published_shapes_and_the_budget_batch(seed_plan):
    assert "not on this machine" in seed_plan.folder_note
    assert 11.5e9 < seed_plan.sizes.transformer < 12.1e9
    b = seed_plan.batch
    assert b.frames * b.height * b.width <= 49 * 512 * 512 and b.batch * b.latent_frames * b.height * b.width \
        // 256 > 12_000
    assert seed_plan.activations[True] < seed_plan.activations[False] / 5
    assert dict((n, s) for n, s, _ in seed_plan.resident)["EMA"] == pytest.approx(4 * seed_plan.sizes.transformer / 8)


def test_plan_warns_before_submit_where_it_cannot_fit_and_not_where_it_does(seed_plan):
    small = dataclasses.replace(seed_plan, job=dataclasses.replace(seed_plan.job, gpu="a100-40gb"))
    big = dataclasses.replace(seed_plan, job=dataclasses.replace(seed_plan.job, gpu="h200"))
    assert small.warnings() and "will not fit on a100-40gb" in small.warnings()[0]
    assert "--low_vram" in small.warnings()[0]
    assert not big.warnings() and "fits h200: yes" in big.text()


def test_memory_plan_cli_exits_1_when_it_does_not_fit(capsys, tiny_model_v51):
    flags = ["--pretrained_model_name_or_path", str(tiny_model_v51), "--config_path",
             str(REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml"), "--image_sample_size=64",
             "--video_sample_size=32", "--token_sample_size=32", "--video_sample_n_frames=9", "--seed=1"]
    assert memory.main(["--gpus-per-node", "2", "--gpu", "h100", "--", *flags, "--validation_prompts", "a cat"]) == 0
    out = capsys.readouterr().out
    assert "fits h100: yes" in out and "= validation peak" in out
    assert memory.main(["--gpu", "nonsense", "--", *flags]) == 2


def test_dry_run_of_a_cpu_job_skips_the_plan_without_importing_torch_models():
    class Spec:
        gpus_per_node = 0
    text, warnings = memory.job_report(Spec())
    assert "CPU job" in text and warnings == []
