"""Checkpoint bytes and lead time: the arithmetic every consumer (submit, check, memory plan) shares."""

from __future__ import annotations

import pytest

from easyanimate import sizing

P12B = 12_000_000_000


def test_zero2_checkpoint_is_14_bytes_per_parameter_with_the_module_on_node_0():
    layout = sizing.Layout(nodes=2, gpus_per_node=8)
    per_node = sizing.checkpoint_bytes_per_node(P12B, layout)
    assert sizing.checkpoint_bytes(P12B, layout) == pytest.approx(14 * P12B)
    assert per_node[0] == pytest.approx(6 * P12B + 2 * P12B)  # half the fp32 shards + the bf16 module
    assert per_node[1] == pytest.approx(6 * P12B)


def test_ddp_checkpoint_is_written_by_rank_0_alone_with_fp32_weights_and_moments():
    per_node = sizing.checkpoint_bytes_per_node(1000, sizing.Layout(nodes=2, gpus_per_node=4, deepspeed=False,
                                                                    ema_bytes=2))
    assert per_node == [12 * 1000 + 1000, 1000]  # the EMA (2 bytes/parameter here) is saved by every rank


def test_lead_time_for_a_12b_model_on_one_8_gpu_node_is_minutes_not_the_default_90_s():
    lead = sizing.lead_time_s(P12B, sizing.Layout(nodes=1, gpus_per_node=8), step_s=30)
    assert lead == 30 + 2 * 168 + 30  # 168 GB at 1 GB/s, doubled, plus margin
    # more nodes share the shards: node 0 writes less, the lead time falls
    assert sizing.lead_time_s(P12B, sizing.Layout(nodes=4, gpus_per_node=8), step_s=30) < lead


def test_a_measured_save_replaces_the_bandwidth_estimate():
    layout = sizing.Layout(nodes=1, gpus_per_node=8)
    assert sizing.lead_time_s(P12B, layout, step_s=10, measured_save_s=100) == 10 + 200 + 30


def test_sharded_ema_spreads_over_the_nodes_instead_of_node_0():
    plain = sizing.checkpoint_bytes_per_node(P12B, sizing.Layout(nodes=2, gpus_per_node=8))
    with_ema = sizing.checkpoint_bytes_per_node(P12B, sizing.Layout(nodes=2, gpus_per_node=8, ema_bytes=4))
    assert [b - a for a, b in zip(plain, with_ema)] == pytest.approx([2 * P12B, 2 * P12B])
