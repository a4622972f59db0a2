"""What an epoch of StormDataModule delivers: every stored row once (resident or streamed), standardised, in a
seeded order; live augmentation draws m fresh augmented copies of every original; DDP ranks take disjoint shards
of equal length; float16 storage and the channels_last layout."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from tests.test_prepare import AUG, make_cfg
from tornado import synth
from tornado.datamodule import StormDataModule
from tornado.prepare import ensure_prepared


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    source = tmp_path_factory.mktemp("dm_ncar")
    synth.generate(source, days=6, patches_per_day=60, seed=3)
    return ensure_prepared(make_cfg(tmp_path_factory.mktemp("dm_prepared"), source, multipliers=[1, 2]), AUG)


def stored(path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `rows` training rows as the file holds them, standardised with its scaler (numpy, float32)."""
    with h5py.File(path, "r") as f:
        x, y = f["train/x"][:rows].astype(np.float32), f["train/y"][:rows].astype(np.float32)
        mean, std = f["scaler/mean"][:].astype(np.float32), f["scaler/std"][:].astype(np.float32)
    return (x - mean[:, None, None]) / std[:, None, None], y


def epoch(dm: StormDataModule) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(batch sizes, every x row, every label) of one pass over the training loader, no trainer attached."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == dm.steps_per_epoch()
    xs = torch.cat([x for x, _ in batches]).numpy()
    ys = torch.cat([y for _, y in batches]).numpy()
    return [len(y) for _, y in batches], xs, ys


def rows(x: np.ndarray, y: np.ndarray) -> Counter:
    """Each (patch, label) as bytes: a multiset that ignores the order."""
    return Counter(xi.tobytes() + bytes([int(yi)]) for xi, yi in zip(x, y))


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streamed"])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_an_epoch_delivers_every_stored_row_once_standardised(prepared, resident, multiplier):
    # chunks of 2 batches of 32: several chunks, the last one partial
    dm = StormDataModule(prepared, 32, multiplier, resident=resident, chunk_batches=2)
    n = dm.meta["n_train"] * multiplier
    assert n % 64 and n > 2 * 64
    sizes, x, y = epoch(dm)
    assert dm.is_resident is resident
    assert sorted(sizes)[1:] == [32] * (len(sizes) - 1) and sum(sizes) == n  # one partial batch at most
    want_x, want_y = stored(prepared, n)
    assert rows(x, y) == rows(want_x, want_y)
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2  # standardised
    assert not np.array_equal(y, want_y) or not np.array_equal(x, want_x)  # shuffled, not the file's order
    # the same seed gives the same order; another seed another
    _, again, _ = epoch(StormDataModule(prepared, 32, multiplier, resident=resident, chunk_batches=2))
    _, other, _ = epoch(StormDataModule(prepared, 32, multiplier, seed=1, resident=resident, chunk_batches=2))
    assert np.array_equal(again, x) and not np.array_equal(other, x)


def test_live_epoch_is_m_fresh_augmented_copies_of_every_original(prepared):
    m = 2
    dm = StormDataModule(prepared, 64, m, augmentation="live", augment=dict(AUG))
    n = dm.meta["n_train"]
    _, x, y = epoch(dm)
    assert len(y) == m * n
    orig_x, orig_y = stored(prepared, n)
    # each delivered patch is a slightly turned original (at most 5 degrees): its nearest original is that one
    d = torch.cdist(torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(orig_x.reshape(n, -1)))
    nearest = d.argmin(dim=1).numpy()
    assert np.bincount(nearest, minlength=n).tolist() == [m] * n  # every original m times
    np.testing.assert_array_equal(y, orig_y[nearest])               # with its own label
    # ... and not the original itself: augmented, each draw its own
    assert bool((x != orig_x[nearest]).reshape(len(x), -1).any(axis=1).all())
    for k in range(n):
        pair = x[nearest == k]
        assert not np.array_equal(pair[0], pair[1]), k
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2  # standardised after augmenting


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streamed"])
@pytest.mark.parametrize("world, batch", [(2, 32), (7, 5), (7, 100)])
def test_ddp_ranks_take_disjoint_shards_of_equal_length(prepared, world, batch, resident):
    """Under DDP each rank gets its own rows of the epoch's permutation and as many steps as every other rank
    (a rank with a step more would wait forever for the others in backward); streamed too, also where there are
    fewer chunks than ranks (7 ranks of 100: one chunk)."""
    n = StormDataModule(prepared, batch).meta["n_train"]
    assert n % world or world == 2  # 7 ranks: rows left over, which no rank may take
    seen, steps = [], []
    for rank in range(world):
        dm = StormDataModule(prepared, batch * world, 1, resident=resident, chunk_batches=2)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0, limit_train_batches=1.0,
                                     max_steps=-1, strategy=SimpleNamespace(root_device=torch.device("cpu")))
        assert dm.per_device_batch == batch
        sizes, x, y = epoch(dm)
        seen.append(rows(x, y))
        steps.append(len(sizes))
    assert len(set(steps)) == 1
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])  # no row on two ranks
    every = sum(seen, Counter())
    want_x, want_y = stored(prepared, n)
    assert sum(every.values()) == n // world * world and not every - rows(want_x, want_y)


@pytest.mark.parametrize("world", [1, 3])
def test_streamed_live_epochs_hold_every_pass_whole(prepared, world):
    """Live augmentation read chunk by chunk, multiplier 3: each rank trains on three whole passes over its share
    of the originals (rows a chunk leaves short of a batch go on into the next: only the last batch is partial;
    they used to be cut, and the last pass with them)."""
    n = StormDataModule(prepared, 7).meta["n_train"]
    with h5py.File(prepared, "r") as f:
        positives = int(f["train/y"][:n].sum())
    steps = []
    for rank in range(world):
        dm = StormDataModule(prepared, 7 * world, 3, "live", dict(AUG), resident=False, chunk_batches=2)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0, limit_train_batches=1.0,
                                     max_steps=-1, strategy=SimpleNamespace(root_device=torch.device("cpu")))
        sizes, _, y = epoch(dm)
        steps.append(len(sizes))
        assert sum(sizes) == 3 * (n // world) and set(sizes[:-1]) == {7}
        if world == 1:
            assert int(y.sum()) == 3 * positives  # every original in every pass
    assert len(set(steps)) == 1


def test_float16_storage_holds_half_and_delivers_float32(prepared):
    """fast.storage=float16: the resident set takes half the memory; batches are the float32 ones, rounded."""
    half = StormDataModule(prepared, 32, 2, resident=True, storage="float16")
    _, x, y = epoch(half)
    assert half.x.dtype == torch.float16 and x.dtype == np.float32
    _, full, full_y = epoch(StormDataModule(prepared, 32, 2, resident=True))  # same seed: same order
    np.testing.assert_array_equal(y, full_y)
    np.testing.assert_array_equal(x, full.astype(np.float16).astype(np.float32))
    assert not np.array_equal(x, full)


@pytest.mark.parametrize("augmentation", ["preaugmented", "live"])
def test_channels_last_batches(prepared, augmentation):
    dm = StormDataModule(prepared, 32, 1, augmentation, dict(AUG), channels_last=True)
    dm.setup("fit")
    for x, _ in dm.train_dataloader():
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def trainer(rank: int = 0, world: int = 1, epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, world_size=world, current_epoch=epoch, limit_train_batches=1.0,
                           max_steps=-1, strategy=SimpleNamespace(root_device=torch.device("cpu")))


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streamed"])
def test_each_epoch_has_its_own_order(prepared, resident):
    orders = []
    for e in (0, 1, 0):
        dm = StormDataModule(prepared, 32, 1, resident=resident, chunk_batches=1)  # one batch a chunk: no blocks
        dm.trainer = trainer(epoch=e)
        orders.append(epoch(dm)[1])
    assert not np.array_equal(orders[0], orders[1]) and np.array_equal(orders[0], orders[2])


def test_each_ddp_rank_draws_its_own_augmentations():
    dm = StormDataModule.__new__(StormDataModule)
    dm.seed, dm._device = 0, torch.device("cpu")
    draws = []
    for rank in (0, 1):
        dm.trainer = trainer(rank, 2)
        draws.append(torch.rand(8, generator=dm._generators()[1]))
    assert not torch.equal(draws[0], draws[1])


def test_live_epoch_is_the_same_for_the_same_seed(prepared):
    def live(seed):
        return epoch(StormDataModule(prepared, 64, 1, augmentation="live", augment=dict(AUG), seed=seed))[1]
    a = live(0)
    assert np.array_equal(a, live(0)) and not np.array_equal(a, live(1))


def test_blocks_of_batches_count_as_lightning_sees_them(prepared):
    """On one device resident chunks reach Lightning as (k, batch, ...) blocks; their number is its length."""
    for batch in range(5, 40):  # every kind of last chunk: whole, one batch, a batch and a part, a part
        dm = StormDataModule(prepared, batch, 1, resident=True, chunk_batches=2)
        dm.trainer = trainer()
        dm.setup("fit")
        assert dm.blocks()
        loader = dm.train_dataloader()
        items = list(loader)
        assert len(items) == len(loader), batch
        assert sum(y.numel() for _, y in items) == dm.meta["n_train"]


def _fake_host(tmp_path, cgroup_line: str, groups: dict[str, dict[str, str]], available_kb: int = 8 * 2 ** 20):
    proc, sys_cg = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       33554432 kB\nMemFree:          100000 kB\n"
                                  f"MemAvailable:   {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    for where, files in groups.items():
        (sys_cg / where).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (sys_cg / where / name).write_text(text)
    return proc, sys_cg


GB = 2 ** 30


@pytest.mark.parametrize("case, line, groups, want", [
    # the page cache counts as available (MemAvailable, not MemFree's 0.1 GB)
    ("no cgroup limit", "0::/", {"": {"memory.max": "max", "memory.current": "1"}}, 8 * GB),
    # a SLURM job's --mem=2G: its cgroup leaves 2 - 1.5 GB used + 0.5 GB of dropable cache
    ("v2 job limit", "0::/slurm/job_7", {"slurm/job_7": {"memory.max": str(2 * GB), "memory.current": str(3 * GB // 2),
                                                         "memory.stat": f"anon 1\ninactive_file {GB // 2}\n"}}, GB),
    ("v2 parent limit binds", "0::/slurm/job_7", {"slurm": {"memory.max": str(GB), "memory.current": str(GB - 100)},
                                                  "slurm/job_7": {"memory.max": "max", "memory.current": "5"}}, 100),
    ("v1 limit", "4:memory:/job", {"memory/job": {"memory.limit_in_bytes": str(3 * GB),
                                                  "memory.usage_in_bytes": str(GB)}}, 2 * GB),
    ("v1 no limit", "4:memory:/job", {"memory/job": {"memory.limit_in_bytes": "9223372036854771712",
                                                     "memory.usage_in_bytes": str(GB)}}, 8 * GB),
])
def test_host_memory_is_what_the_system_and_the_job_s_cgroup_leave(case, line, groups, want, tmp_path):
    from tornado.datamodule import host_memory_available

    assert host_memory_available(*_fake_host(tmp_path, line, groups)) == want


def test_auto_residence_holds_the_set_only_where_half_the_available_memory_takes_it(monkeypatch):
    from tornado import datamodule

    monkeypatch.setattr(datamodule, "host_memory_available", lambda: 1000)
    cpu = torch.device("cpu")
    assert datamodule._fits_in_memory(499, cpu) and not datamodule._fits_in_memory(500, cpu)
