"""LightningDataModule over a prepared HDF5 file: preaugmented copies or live augmentation.

Data that fits is held where training runs (GPU memory on a GPU) and batches follow a device-side random
permutation: no per-sample DataLoader work. The permutation is gathered (and, live, augmented) a chunk of
batches at a time and every batch is a view of its chunk, so a step costs no data work of its own (on a
GPU: a few kernel launches per chunk instead of a dozen per step). On one device Lightning gets each chunk
as one item, a block of shape (k, batch, 3, 32, 32), and `StormModule.training_step` takes an optimizer
step per batch in it: Lightning's own per-item work (hooks, checks, ~0.1-0.3 ms) is paid once per chunk.
Larger data streams from the HDF5 file in contiguous chunks, shuffled by chunk and within each chunk.
Under DDP every rank takes its own shard of each epoch's permutation (or of the chunk list), with equal
step counts.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytorch_lightning as pl
import torch

from tornado.augment import AUGMENTATIONS, AugmentConfig, augment
from tornado.errors import TornadoError


def read_meta(path) -> dict:
    try:
        with h5py.File(path, "r") as f:
            need = ["train/x", "train/y", "test/x", "test/y"] + (["val/x", "val/y"] if f.attrs.get("n_val", 0) else [])
            missing = [name for name in need if name not in f]
            if missing:
                raise TornadoError(f"{path}: not a prepared storm file (no {missing[0]}); delete it to prepare it "
                                   "again")
            return {
                "n_train": int(f.attrs["n_train"]),
                "n_test": int(f.attrs["n_test"]),
                "multipliers": [int(m) for m in f.attrs["multipliers"]],
                "mean": f["scaler/mean"][:].astype(np.float64),
                "std": f["scaler/std"][:].astype(np.float64),
                "positives_train": int(f.attrs.get("positives_train", -1)),
                "n_train_originals": int(f.attrs.get("n_train_originals", f.attrs["n_train"])),
                "positives_train_originals": int(f.attrs.get("positives_train_originals",
                                                             f.attrs.get("positives_train", -1))),
                "n_val": int(f.attrs.get("n_val", 0)),
                "n_dropped": int(f.attrs.get("n_dropped_nonfinite", 0)),  # patches missing values, not read
            }
    except (OSError, KeyError) as e:
        raise TornadoError(f"{path}: not a prepared storm file ({e})") from None


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def load_split(path, split: str = "test", device="cpu") -> tuple[torch.Tensor, np.ndarray]:
    """The untouched test (or validation) set, standardised with the stored scaler."""
    meta = read_meta(path)
    with h5py.File(path, "r") as f:
        x = torch.from_numpy(f[f"{split}/x"][:].astype(np.float32))
        y = f[f"{split}/y"][:].astype(np.uint8)
    mean = torch.tensor(meta["mean"], dtype=torch.float32)
    std = torch.tensor(meta["std"], dtype=torch.float32)
    return standardise(x, mean, std).to(device), y


def _fits_in_memory(nbytes: int, device: torch.device) -> bool:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes < 0.5 * free
    avail = host_memory_available()
    return avail is None or nbytes < 0.5 * avail


def host_memory_available(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes of RAM this process can still take: the system's MemAvailable (free memory and the page cache it can
    reclaim, not only free pages), or less where its cgroup's limit allows less (a SLURM job's `--mem`, a
    container's); None where neither can be read."""
    room = []
    try:
        room += [int(line.split()[1]) * 1024 for line in (proc / "meminfo").read_text().splitlines()
                 if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not room:
        try:
            room.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # "0::/path" (cgroup v2) or "4:memory:/path" (v1)
        _, controllers, path = line.split(":", 2)
        v2 = controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        mount = cgroups if v2 else cgroups / "memory"
        files = ("memory.max", "memory.current", "inactive_file") if v2 else (
            "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        folder = mount / path.lstrip("/")
        for group in [folder, *folder.parents] if folder.is_relative_to(mount) else []:  # a parent's limit binds too
            left = _cgroup_room(group, *files)
            if left is not None:
                room.append(left)
            if group == mount:
                break
    return min(room) if room else None


def _cgroup_room(group: Path, limit_file: str, usage_file: str, inactive: str) -> int | None:
    """What a cgroup's memory limit leaves: the limit less its usage, the page cache it can drop not counted."""
    try:
        limit = (group / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= 2 ** 60:  # no limit (v1 writes it as a huge number)
            return None
        used = int((group / usage_file).read_text())
    except (OSError, ValueError):
        return None
    try:
        stat = dict(line.split(None, 1) for line in (group / "memory.stat").read_text().splitlines() if " " in line)
        used -= int(stat.get(inactive, 0))
    except (OSError, ValueError):
        pass
    return max(0, int(limit) - used)


class StormDataModule(pl.LightningDataModule):
    def __init__(self, path: str, batch_size: int, data_multiplier: int = 1,
                 augmentation: str = "preaugmented", augment: dict | None = None, seed: int = 0,
                 resident: str | bool = "auto", storage: str = "float32", chunk_batches: int = 32,
                 channels_last: bool = False):
        super().__init__()
        if augmentation not in AUGMENTATIONS:
            raise TornadoError(f"augmentation={augmentation}: unknown, use one of {', '.join(AUGMENTATIONS)}")
        if storage not in ("float32", "float16"):
            raise TornadoError(f"fast.storage={storage}: unknown, use float32 or float16")
        self.path = str(path)
        self.batch_size = int(batch_size)
        self.multiplier = int(data_multiplier)
        self.augmentation = augmentation
        self.augment_cfg = AugmentConfig.from_cfg(augment or {})
        self.seed = int(seed)
        self.resident = resident
        self.is_resident: bool | None = None  # decided in setup (None: a run that failed before it)
        self.storage = getattr(torch, storage)
        self.chunk_batches = chunk_batches
        self.channels_last = bool(channels_last)  # deliver batches in the network's memory layout
        self.meta = read_meta(self.path)
        if augmentation == "preaugmented" and self.multiplier not in self.meta["multipliers"]:
            raise TornadoError(
                f"data_multiplier={self.multiplier}: {self.path} holds multipliers "
                f"{self.meta['multipliers']} (set data.multipliers=[...,{self.multiplier}] to prepare one that has)")
        if self.multiplier < 1:
            raise TornadoError(f"data_multiplier={self.multiplier}: must be a positive integer")
        self.data_wait_s = 0.0
        self.x = self.y = None
        self._device = torch.device("cpu")  # where `load` puts the data before any trainer is attached

    # sizes -------------------------------------------------------------------------------
    @property
    def world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    @property
    def per_device_batch(self) -> int:
        return max(1, self.batch_size // self.world[1])

    @property
    def samples_per_epoch(self) -> int:
        return self.meta["n_train"] * self.multiplier

    @property
    def stored_rows(self) -> int:
        return self.samples_per_epoch if self.augmentation == "preaugmented" else self.meta["n_train"]

    def steps_per_epoch(self) -> int:
        return math.ceil(self.samples_per_epoch // self.world[1] / self.per_device_batch)

    def chunk_rows(self) -> int:
        """Rows gathered (and augmented) at once: whole batches, up to ~800 MB on a GPU, ~25 MB on a CPU.

        On a CPU larger chunks are slower: they leave the caches and every fresh buffer of more than 32 MB is
        a new mapping whose pages fault in on first touch (glibc's malloc returns such buffers to the system).
        """
        b = self.per_device_batch
        cap = (1 << 16) if self.device.type == "cuda" else (1 << 11)
        return b * max(1, min(self.chunk_batches, cap // b))

    def blocks(self) -> bool:
        """Whether resident chunks reach Lightning as blocks of batches (one device, no batch or step limit:
        Lightning's limits count items, and DDP needs one forward through its wrapper per backward)."""
        t = self.trainer
        if t is None or t.world_size > 1 or self.chunk_rows() < 2 * self.per_device_batch:
            return False
        limit = t.limit_train_batches
        return (limit is None or (type(limit) is float and limit == 1.0)) and t.max_steps in (None, -1)

    @property
    def device(self) -> torch.device:
        t = self.trainer
        return t.strategy.root_device if t is not None else self._device

    def load(self, device: str | torch.device = "cpu") -> "StormDataModule":
        """Load the training set onto `device` now (once): later fits on that device reuse it."""
        self._device = torch.device(device)
        self.setup("fit")
        return self

    # loading -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.x is not None:
            return
        dev = self.device
        self.mean = torch.tensor(self.meta["mean"], dtype=torch.float32, device=dev)
        self.std = torch.tensor(self.meta["std"], dtype=torch.float32, device=dev)
        nbytes = self.stored_rows * 3 * 32 * 32 * self.storage.itemsize
        resident = self.resident if isinstance(self.resident, bool) else _fits_in_memory(nbytes, dev)
        self.is_resident = bool(resident)
        if not self.is_resident:
            return
        with h5py.File(self.path, "r") as f:  # opened here, in this process, and closed again
            x = torch.from_numpy(f["train/x"][: self.stored_rows].astype(np.float32, copy=False))
            y = torch.from_numpy(f["train/y"][: self.stored_rows].astype(np.float32))
        x = x.to(dev)
        if self.augmentation == "preaugmented":
            x = standardise(x, self.mean, self.std)
        x = x.to(self.storage)
        if self.channels_last and self.augmentation == "preaugmented":
            x = x.contiguous(memory_format=torch.channels_last)  # gathers (x[idx]) keep this layout
        self.x = x
        self.y = y.to(dev)

    def train_dataloader(self):
        return _ResidentBatches(self) if self.is_resident else _StreamedBatches(self)

    def prepare_batch(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        x = x.float()
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.augmentation == "live":
            x = augment(x, self.augment_cfg, gen)
            # standardised and laid out in one pass: x * (1 / std) + (-mean / std)
            out = torch.empty_like(x, memory_format=layout)
            return torch.addcmul(-self.mean.view(1, -1, 1, 1) / self.std.view(1, -1, 1, 1), x,
                                 1.0 / self.std.view(1, -1, 1, 1), out=out)
        return x.contiguous(memory_format=layout)  # a no-op where it already is

    def _generators(self) -> tuple[torch.Generator, torch.Generator, int]:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        dev = self.device
        order = torch.Generator(device=dev)
        order.manual_seed(self.seed * 1_000_003 + epoch)
        rank = self.world[0]
        aug = torch.Generator(device=dev)
        aug.manual_seed((self.seed * 1_000_003 + epoch) * 64 + 1 + rank)
        return order, aug, epoch


class _ResidentBatches:
    def __init__(self, dm: StormDataModule):
        self.dm = dm

    def __len__(self) -> int:
        dm = self.dm
        if not dm.blocks():
            return dm.steps_per_epoch()
        full, rest = divmod(dm.samples_per_epoch, dm.chunk_rows())
        return full + (rest >= dm.per_device_batch) + (rest % dm.per_device_batch > 0)

    def __iter__(self):
        dm = self.dm
        blocks = dm.blocks()
        order, aug, _ = dm._generators()
        rank, world = dm.world
        b = dm.per_device_batch
        perm = torch.randperm(dm.samples_per_epoch, generator=order, device=dm.device)
        if world > 1:
            perm = perm[: len(perm) // world * world][rank::world]
        if dm.augmentation == "live":
            perm = perm % dm.meta["n_train"]
        chunk = dm.chunk_rows()
        for c in range(0, len(perm), chunk):
            t0 = time.perf_counter()
            idx = perm[c:c + chunk]
            xc = dm.prepare_batch(dm.x[idx], aug)  # x[idx] keeps a channels_last layout
            yc = dm.y[idx]
            dm.data_wait_s += time.perf_counter() - t0
            if blocks:
                k = len(idx) // b
                if k:
                    yield xc[:k * b].unflatten(0, (k, b)), yc[:k * b].unflatten(0, (k, b))
                if len(idx) % b:
                    yield xc[k * b:], yc[k * b:]
                continue
            for i in range(0, len(idx), b):
                yield xc[i:i + b], yc[i:i + b]


class _StreamedBatches:
    """Contiguous chunks read from HDF5 (a handle opened lazily in the iterating process)."""

    def __init__(self, dm: StormDataModule):
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.steps_per_epoch()

    def _chunks(self, gen: torch.Generator):
        """(start, end, this rank's rows of it from `start`, shuffled): contiguous chunks in a shuffled order.
        Under DDP every rank reads every chunk and takes its share of the rows (the same shuffle on every rank,
        so the shares never overlap): every rank has the same rows per pass, whatever the number of chunks. A
        chunk is as many rows as one rank's chunk would be alone."""
        dm = self.dm
        rank, world = dm.world
        size = dm.per_device_batch * max(1, dm.chunk_batches // world) * world
        starts = list(range(0, dm.stored_rows, size))
        while True:  # live: multiplier passes over the originals; cycles until the step count is reached
            for k in torch.randperm(len(starts), generator=gen).tolist():
                s, e = starts[k], min(starts[k] + size, dm.stored_rows)
                perm = torch.randperm(e - s, generator=gen)
                yield s, e, perm[: (e - s) // world * world][rank::world].numpy()

    def __iter__(self):
        dm = self.dm
        _, aug, epoch = dm._generators()
        b, steps = dm.per_device_batch, len(self)
        base = dm.seed * 1_000_003 + epoch
        # this rank's rows in the epoch's passes (live: one per multiplier); rows a chunk leaves short of a
        # batch go on into the next chunk, so only the epoch's last batch is partial and every pass is whole
        passes = dm.multiplier if dm.augmentation == "live" else 1
        left = passes * (dm.stored_rows // dm.world[1])
        with h5py.File(dm.path, "r") as f:
            fx, fy = f["train/x"], f["train/y"]
            done = 0
            carry_x = carry_y = None
            chunks = self._chunks(torch.Generator().manual_seed(base))  # same order on every rank
            while done < steps:
                t0 = time.perf_counter()
                s, e, mine = next(chunks)
                left -= len(mine)
                x = torch.from_numpy(fx[s:e][mine].astype(np.float32, copy=False)).to(dm.device)
                y = torch.from_numpy(fy[s:e][mine].astype(np.float32)).to(dm.device)
                if dm.augmentation == "preaugmented":
                    x = standardise(x, dm.mean, dm.std)
                if carry_x is not None:
                    x, y = torch.cat([carry_x, x]), torch.cat([carry_y, y])
                whole = len(x) if left <= 0 else len(x) // b * b  # the epoch's rows all read: the rest too
                carry_x, carry_y = (x[whole:], y[whole:]) if whole < len(x) else (None, None)
                dm.data_wait_s += time.perf_counter() - t0
                for i in range(0, whole, b):
                    if done >= steps:
                        break
                    t0 = time.perf_counter()
                    xb = dm.prepare_batch(x[i:i + b], aug)
                    yb = y[i:i + b]
                    dm.data_wait_s += time.perf_counter() - t0
                    done += 1
                    yield xb, yb
