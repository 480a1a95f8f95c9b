import dataclasses

import pytest

from easyanimate import config
from easyanimate.config import ConfigError, TrainConfig, parse_args, validate
from seed_commands import seed_commands

# The original trainer's 89 flags: a new flag is a deliberate diff to this list (as torchtitan freezes its CLI).
ORIGINAL_FLAGS = """
pretrained_model_name_or_path revision variant non_ema_revision config_path transformer_path vae_path output_dir
cache_dir logging_dir train_data_meta train_data_dir video_repeat enable_bucket video_sample_size image_sample_size
token_sample_size video_sample_n_frames video_sample_stride random_hw_adapt training_with_video_token_length
random_ratio_crop random_frame_crop keep_all_node_same_token_length dataloader_num_workers max_train_samples
random_flip enable_text_encoder_in_dataloader train_batch_size vae_mini_batch num_train_epochs max_train_steps
gradient_accumulation_steps gradient_checkpointing learning_rate scale_lr lr_scheduler lr_warmup_steps use_8bit_adam
use_came adam_beta1 adam_beta2 adam_weight_decay adam_epsilon max_grad_norm abnormal_norm_clip_start
initial_grad_norm_ratio trainable_modules trainable_modules_low_learning_rate use_ema allow_tf32
enable_xformers_memory_efficient_attention multi_stream low_vram loss_type train_sampling_steps uniform_sampling
weighting_scheme logit_mean logit_std mode_scale snr_loss prediction_type noise_offset input_perturbation
noise_share_in_frames noise_share_in_frames_ratio motion_sub_loss motion_sub_loss_ratio train_mode control_ref_image
tokenizer_max_length use_deepspeed mixed_precision local_rank seed checkpointing_steps checkpoints_total_limit
resume_from_checkpoint validation_prompts validation_paths validation_steps validation_epochs report_to
tracker_project_name report_model_info push_to_hub hub_model_id hub_token
""".split()
OUR_FLAGS = ["max_bad_sample_fraction", "text_drop_ratio", "control_drop_ratio", "ref_drop_ratio", "sample_ledger",
             "init_from_base_model", "save_on_signal", "validation_ref_paths", "log_every_s",
             "master_weights_dtype", "checkpointing_async"]


def test_flag_set_is_the_originals_89_plus_ours():
    assert len(ORIGINAL_FLAGS) == 89
    assert [f.name for f in dataclasses.fields(TrainConfig)] == ORIGINAL_FLAGS + OUR_FLAGS


def test_every_flag_has_help_text():
    for action in config.build_parser()._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest


@pytest.mark.parametrize("title", list(seed_commands()))
def test_seed_command_flags_parse_with_their_meaning(title):
    _, flags = seed_commands()[title]
    cfg = parse_args(flags)
    assert cfg.image_sample_size == 1024 and cfg.video_sample_size == 256 and cfg.token_sample_size == 512
    assert cfg.video_sample_n_frames == 49 and cfg.video_sample_stride == 3 and cfg.video_repeat == 1
    assert cfg.learning_rate == 2e-05 and cfg.adam_epsilon == 1e-10 and cfg.max_grad_norm == 0.05
    assert cfg.gradient_checkpointing and cfg.enable_bucket and cfg.uniform_sampling and cfg.random_hw_adapt
    assert cfg.trainable_modules == ["."] and cfg.mixed_precision == "bf16"
    assert cfg.loss_type == ("flow" if "V5.1" in title else "ddpm")
    assert cfg.use_deepspeed == ("with deepspeed" in title)
    if "V5.1" in title:
        assert cfg.train_mode == "control_ref" and cfg.control_ref_image == "first_frame"


@pytest.mark.parametrize("flag,value", [("loss_type", "flwo"), ("train_mode", "contrl"),
                                        ("weighting_scheme", "sqrt"), ("control_ref_image", "last")])
def test_typo_in_a_choice_flag_is_rejected_naming_it(flag, value, capsys):
    with pytest.raises(SystemExit):
        parse_args([f"--{flag}={value}"])
    assert f"--{flag}" in capsys.readouterr().err


@pytest.fixture
def valid_args(tmp_path):
    model = tmp_path / "model"
    (model / "transformer").mkdir(parents=True)
    meta = tmp_path / "meta.json"
    meta.write_text("[]")
    yaml = config.__file__.replace("easyanimate/config.py", "configs/easyanimate_video_v5.1_magvit_qwen.yaml")
    return [f"--pretrained_model_name_or_path={model}", f"--train_data_meta={meta}", f"--config_path={yaml}",
            "--seed=1", "--loss_type=flow", "--video_repeat=1", "--enable_bucket"]


def test_valid_flags_validate_without_warnings(valid_args):
    assert validate(parse_args(valid_args)) == []


@pytest.mark.parametrize("change,flag", [
    (lambda a, p: a + [f"--train_data_meta={p}/missing.json"], "train_data_meta"),
    (lambda a, p: a + [f"--pretrained_model_name_or_path={p}"], "pretrained_model_name_or_path"),
    (lambda a, p: a + ["--config_path=nope.yaml"], "config_path"),
    (lambda a, p: a + ["--train_batch_size=0"], "train_batch_size"),
    (lambda a, p: a + ["--video_sample_size=100"], "video_sample_size"),
    (lambda a, p: [x for x in a if not x.startswith("--seed")], "seed"),
    (lambda a, p: a + ["--validation_paths", "a.mp4"], "validation_paths"),
    (lambda a, p: a + ["--master_weights_dtype=bf16", "--mixed_precision=no"], "master_weights_dtype"),
])
def test_invalid_values_fail_before_loading_naming_the_flag(valid_args, tmp_path, change, flag):
    with pytest.raises(ConfigError, match=f"--{flag}"):
        validate(parse_args(change(valid_args, tmp_path)))


def test_model_folder_without_transformer_names_the_fix(valid_args, tmp_path):
    (tmp_path / "model" / "transformer").rmdir()
    with pytest.raises(ConfigError, match="no transformer/ subfolder"):
        validate(parse_args(valid_args))


def test_defaults_that_bite_warn_loudly(valid_args):
    args = [a for a in valid_args if a not in ("--loss_type=flow", "--video_repeat=1")] + ["--noise_offset=0.1"]
    warnings = "\n".join(validate(parse_args(args)))
    assert "--loss_type is 'sigma'" in warnings
    assert "--video_repeat is 0" in warnings
    assert "--noise_offset is accepted for compatibility" in warnings


def test_fingerprint_ignores_run_control_flags_but_not_training_ones(valid_args):
    base = config.fingerprint(parse_args(valid_args))
    assert config.fingerprint(parse_args(valid_args + ["--max_train_steps=7", "--resume_from_checkpoint=latest"])) == base
    assert config.fingerprint(parse_args(valid_args + ["--learning_rate=3e-4"])) != base


def test_config_dump_records_the_accumulation_an_elastic_resume_uses_and_the_flag_as_given(tmp_path):
    import json
    from easyanimate.train_control import write_config_dump
    from easyanimate.training.elastic import ResumePlan
    given = parse_args([f"--output_dir={tmp_path}", "--gradient_accumulation_steps=1", "--hub_token=hf_s3cr3t"])
    used = ResumePlan(saved_world=2, world=1, batch_size=1, saved_accumulation=1, accumulation=2,
                      max_train_steps=6).apply(given)
    write_config_dump(used, "diffusers", given=given)
    dump = json.loads((tmp_path / "config.json").read_text())
    assert dump["gradient_accumulation_steps"] == 2 and dump["as_given"] == {"gradient_accumulation_steps": 1}
    assert dump["hub_token"] == "<redacted>"
    write_config_dump(given, "diffusers", given=given)  # nothing overridden
    assert json.loads((tmp_path / "config.json").read_text())["as_given"] == {}
