"""At start-up rank 0 alone probes the files' sizes and shares them (two real gloo processes)."""

import json
import os

import pytest
import torch.multiprocessing as mp

pytestmark = pytest.mark.integration


def _rank_main(rank: int, world: int, init_file: str, cfg, out_dir: str) -> None:
    import torch.distributed as dist

    from easyanimate.data import loader

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    probed = []
    real_probe = loader.probe_many

    def counting_probe(items, *args, **kwargs):
        items = list(items)
        probed.extend(path for path, _ in items)
        return real_probe(items, *args, **kwargs)

    loader.probe_many = counting_probe
    data = loader.build_train_dataloader(cfg, rank=rank, world_size=world)
    sizes = sorted(data.dataset.native_sizes.items())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"probed": probed, "batches": len(data.sampler), "sizes": repr(sizes)}, f)
    dist.destroy_process_group()


def test_only_rank_zero_probes_and_every_rank_builds_the_same_data(demo_data, tiny_cfg, tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), tiny_cfg(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    entries = json.loads((demo_data / "metadata_control.json").read_text())
    assert len(ranks[0]["probed"]) == len(entries) and ranks[1]["probed"] == []
    assert ranks[0]["batches"] == ranks[1]["batches"] > 0
    assert ranks[0]["sizes"] == ranks[1]["sizes"]
