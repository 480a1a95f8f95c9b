import math

import torch

from easyanimate.training import losses, optim, timesteps


def test_masked_mse_zeroes_outliers_but_keeps_them_in_the_denominator():
    pred = torch.zeros(1, 4)
    target = torch.tensor([[1.0, 2.0, 100.0, 0.0]])
    assert losses.masked_mse(pred, target).item() == (1 + 4 + 0 + 0) / 4


def test_masked_mse_weights_each_sample():
    pred, target = torch.zeros(2, 3), torch.ones(2, 3)
    assert losses.masked_mse(pred, target, torch.tensor([1.0, 3.0])).item() == 2.0


def test_motion_sub_loss_sees_only_temporal_differences():
    target = torch.zeros(1, 1, 4, 2, 2)
    offset = target + 5.0  # same motion (none), different level
    assert losses.motion_sub_loss(offset, target).item() == 0.0
    moving = target.clone()
    moving[:, :, 2] = 1.0
    assert losses.motion_sub_loss(moving, target).item() > 0


def test_motion_sub_loss_keeps_large_errors_as_the_original():
    pred, target = torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 1, 2, 1, 1)
    pred[:, :, 1] = 100.0  # a frame difference of 100: the main loss zeroes such errors, the motion loss does not
    assert losses.motion_sub_loss(pred, target).item() == 100.0 ** 2


def test_motion_sub_loss_only_mixes_in_with_more_than_two_latent_frames():
    loss = torch.tensor(1.0)
    two = torch.randn(1, 1, 2, 2, 2)
    assert losses.with_motion_sub_loss(loss, two, two * 0, 0.25) is loss
    three = torch.randn(1, 1, 3, 2, 2)
    mixed = losses.with_motion_sub_loss(loss, three, three * 0, 0.25)
    assert torch.isclose(mixed, 0.75 * loss + 0.25 * losses.motion_sub_loss(three, three * 0))


def test_flow_interpolates_and_targets_velocity():
    x0, eps = torch.full((2, 1, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1, 1), -1.0)
    noisy, target = losses.flow_noisy(x0, eps, torch.tensor([0.0, 1.0])), losses.flow_target(x0, eps)
    assert noisy.flatten().tolist() == [2.0, -1.0]
    assert target.flatten().tolist() == [-3.0, -3.0]


def test_shared_frame_noise_mixes_previous_frame():
    noise = torch.zeros(1, 1, 3, 1, 1)
    noise[:, :, 0] = 1.0
    shared = losses.shared_frame_noise(noise, 0.5)
    assert shared.flatten().tolist() == [1.0, 0.5, 0.25]


def test_strata_split_the_timestep_range_across_ranks():
    ranges = []
    for rank in range(4):
        gen = torch.Generator().manual_seed(rank)
        idx = timesteps.sample_indices(500, 1000, gen, stratum=timesteps.strata(rank, 4, 1000))
        ranges.append((int(idx.min()), int(idx.max())))
    assert ranges[0][0] >= 0 and ranges[0][1] < 250
    assert ranges[3][0] >= 750 and ranges[3][1] < 1000
    assert all(ranges[r][1] < ranges[r + 1][0] for r in range(3))


def test_strata_count_divides_both_world_size_and_steps():
    assert timesteps.strata(5, 6, 1000) == (1, 2)  # gcd(6, 1000) = 2
    assert timesteps.strata(0, 3, 1000) == (0, 1)
    # Groups of consecutive ranks, as the original's DiscreteSampling: ranks 0-2 low half, 3-5 high half.
    assert [timesteps.strata(r, 6, 1000)[0] for r in range(6)] == [0, 0, 0, 1, 1, 1]


def test_flow_u_is_stratified_per_rank_and_differs_between_ranks():
    draws = [timesteps.sample_flow_u(64, torch.Generator().manual_seed(r), weighting_scheme="none", logit_mean=0,
                                     logit_std=1, mode_scale=1.29, stratum=(r, 2)) for r in range(2)]
    assert draws[0].max() < 0.5 <= draws[1].min()


def test_flow_u_from_logit_normal_is_in_unit_interval_and_seeded():
    a = timesteps.sample_flow_u(32, torch.Generator().manual_seed(0), weighting_scheme="logit_normal",
                                logit_mean=0, logit_std=1, mode_scale=1.29)
    b = timesteps.sample_flow_u(32, torch.Generator().manual_seed(0), weighting_scheme="logit_normal",
                                logit_mean=0, logit_std=1, mode_scale=1.29)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 1


def test_clip_threshold_decays_linearly_to_max_grad_norm():
    assert optim.clip_threshold(0, 0.05, 1000, 5) == 0.25
    assert math.isclose(optim.clip_threshold(500, 0.05, 1000, 5), 0.15)
    assert optim.clip_threshold(1000, 0.05, 1000, 5) == 0.05


def test_spike_clip_shrinks_only_abnormal_norms_after_the_decay():
    assert optim.spike_clip(0.2, 0.05, 2000, 1000) == 0.05
    assert math.isclose(optim.spike_clip(0.5, 0.05, 2000, 1000), 0.005)
    assert optim.spike_clip(0.5, 0.05, 10, 1000) == 0.05
    # The original starts after abnormal_norm_clip_start (global_step > start), not at it.
    assert optim.spike_clip(0.5, 0.05, 1000, 1000) == 0.05
    assert math.isclose(optim.spike_clip(0.5, 0.05, 1001, 1000), 0.005)


def test_came_gets_no_weight_decay_as_in_the_original(monkeypatch):
    import sys
    import types
    from easyanimate.config import parse_args
    seen = {}
    fake = types.ModuleType("came_pytorch")
    fake.CAME = lambda groups, **kwargs: seen.update(kwargs)
    monkeypatch.setitem(sys.modules, "came_pytorch", fake)
    optim.build_optimizer(([torch.nn.Parameter(torch.zeros(1))], []), parse_args(["--use_came",
                          "--adam_weight_decay=0.05"]), 1e-4)
    assert "weight_decay" not in seen and seen["betas"] == (0.9, 0.999, 0.9999)
