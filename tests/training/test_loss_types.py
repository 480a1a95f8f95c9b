"""--loss_type as one table entry chosen when the run is built; --train_sampling_steps meaning what it meant in
EasyAnimate's trainer at 300, 1000 and 1200; no reference latent that is its own target."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from easyanimate.config import ConfigError, parse_args, validate
from easyanimate.models import loading
from easyanimate.models.tiny import tiny_vae
from easyanimate.training import step, validation
from easyanimate.training.loss_types import LOSS_TYPES, DiffusionNoising, FlowMatching, SpacedSigmaNoising


def _cfg(*flags: str):
    return parse_args(["--seed=1", *flags])


def _noising(loss: str, steps: int, scheduler=None, *flags: str):
    cfg = _cfg(f"--loss_type={loss}", f"--train_sampling_steps={steps}", *flags)
    return LOSS_TYPES[loss].noising(cfg, scheduler or DDPMScheduler(), rank=0, world_size=1)


def test_each_loss_type_is_one_table_entry():
    assert set(LOSS_TYPES) == {"flow", "ddpm", "sigma"}
    flow, ddpm, sigma = LOSS_TYPES["flow"], LOSS_TYPES["ddpm"], LOSS_TYPES["sigma"]
    assert (flow.noising, flow.scheduler, flow.scheduler_required, flow.validation_scheduler) == \
        (FlowMatching, FlowMatchEulerDiscreteScheduler, True, FlowMatchEulerDiscreteScheduler)
    assert (ddpm.noising, ddpm.scheduler, ddpm.scheduler_required, ddpm.validation_scheduler) == \
        (DiffusionNoising, DDPMScheduler, True, DDIMScheduler)
    assert (sigma.noising, sigma.scheduler, sigma.scheduler_required, sigma.validation_scheduler) == \
        (SpacedSigmaNoising, DDPMScheduler, False, DDIMScheduler)


@pytest.mark.parametrize("module", [step, validation, loading])
def test_per_batch_and_loading_code_never_compares_the_loss_type_string(module):
    assert "loss_type ==" not in inspect.getsource(module) and "cfg.loss_type" not in inspect.getsource(module)


def _drawn(noising, n: int = 20000) -> torch.Tensor:
    return noising.draw(n, torch.Generator().manual_seed(0)).t


def test_ddpm_trains_the_drawn_index_as_the_timestep_at_300_and_1000():
    t300, t1000 = _drawn(_noising("ddpm", 300)), _drawn(_noising("ddpm", 1000))
    assert t300.min() == 0 and t300.max() == 299  # the original: t in [0, 300), never above
    assert t1000.min() == 0 and t1000.max() == 999


def test_ddpm_refuses_more_sampling_steps_than_the_schedule_has():
    with pytest.raises(ConfigError, match="--train_sampling_steps 1200"):
        _noising("ddpm", 1200)


def test_sigma_respaces_the_schedule_at_300_and_is_the_identity_at_1000():
    spaced = _noising("sigma", 300).timestep_of_index
    assert len(spaced) == 300 and spaced[0] == 0 and spaced[-1] == 999
    assert set(torch.diff(spaced).tolist()) <= {3, 4}  # stride 999 / 299
    assert torch.equal(_noising("sigma", 1000).timestep_of_index, torch.arange(1000))
    assert _drawn(_noising("sigma", 300)).max() == 999  # the whole noise range, in 300 steps


def test_sigma_refuses_1200_steps_before_anything_loads(tmp_path):
    (tmp_path / "model" / "transformer").mkdir(parents=True)
    (tmp_path / "meta.json").write_text("[]")
    yaml = inspect.getfile(step).replace("easyanimate/training/step.py", "configs/easyanimate_video_v5.1_magvit_qwen.yaml")
    with pytest.raises(ConfigError, match="--train_sampling_steps"):
        validate(_cfg("--loss_type=sigma", "--train_sampling_steps=1200", f"--config_path={yaml}",
                      f"--pretrained_model_name_or_path={tmp_path / 'model'}", f"--train_data_meta={tmp_path}/meta.json"))
    with pytest.raises(ConfigError, match="--train_sampling_steps 1200"):
        _noising("sigma", 1200)


def test_sigma_noises_with_the_linear_beta_schedule_at_the_respaced_timestep():
    noising = _noising("sigma", 300)
    draw = noising.draw(4, torch.Generator().manual_seed(3))
    x0, eps = torch.randn(4, 2, 1, 2, 2, dtype=torch.float64), torch.randn(4, 2, 1, 2, 2, dtype=torch.float64)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)[draw.t].view(-1, 1, 1, 1, 1)
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    assert torch.allclose(noising.noisy(x0, eps, draw).double(), expected, atol=1e-5)


def test_sigma_snr_loss_targets_x0_for_the_first_250_respaced_steps():
    noising = _noising("sigma", 1000, None, "--snr_loss")
    x0, eps = torch.ones(2, 1, 1, 1, 1), torch.zeros(2, 1, 1, 1, 1)
    draw = SimpleNamespace(index=torch.tensor([249, 250]), t=torch.tensor([249, 250]))
    assert noising.target(x0, eps, draw).flatten().tolist() == [1.0, 0.0]


def test_flow_ignores_train_sampling_steps_as_the_original():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    a, b = _noising("flow", 300, scheduler), _noising("flow", 1000, scheduler)
    assert torch.equal(_drawn(a, 64), _drawn(b, 64))
    assert "--train_sampling_steps has no effect with --loss_type flow" in " ".join(
        validate_warnings("--loss_type=flow", "--train_sampling_steps=300"))


def validate_warnings(*flags: str) -> list[str]:
    from easyanimate.config import _warnings
    return _warnings(_cfg(*flags))


@pytest.mark.parametrize("frames,reference_expected", [(1, False), (5, True)])
def test_reference_slot_is_empty_when_the_batch_has_one_latent_frame(frames, reference_expected):
    torch.manual_seed(0)
    components = SimpleNamespace(vae=tiny_vae().eval(), text_encoder=None, noise_scheduler=DDPMScheduler())
    cfg = _cfg("--loss_type=ddpm", "--train_mode=control_ref", "--ref_drop_ratio=0", "--control_drop_ratio=0")
    objective = step.ControlObjective(cfg, components, LOSS_TYPES["ddpm"], uses_ref=True, rank=0, world_size=1)
    pixels = torch.randint(0, 256, (2, frames, 3, 16, 16), dtype=torch.uint8)
    batch = {"pixel_values": pixels, "control_pixel_values": pixels.flip(-1), "ref_pixel_values": pixels[:, :1],
             "data_type": "video"}
    generator = torch.Generator().manual_seed(0)
    latents = step.encode_pixels(components.vae, pixels, 1, generator)
    conditioning = objective.conditioning(batch, latents, generator)
    channels = latents.shape[1]
    ref = conditioning[:, channels:]
    assert ref.shape == latents.shape
    assert bool(ref.abs().sum() > 0) == reference_expected
    if reference_expected:
        assert ref[:, :, 1:].abs().sum() == 0  # only the first latent frame holds the reference
