"""Every speed switch computes the same training: the loss after a few steps matches with and without it."""
from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.test_train import CONF, small

# switch override -> relative tolerance on the mean training loss of the first steps
SWITCHES = {
    "fast.channels_last=true": 1e-4,
    "fast.storage=float16": 5e-3,
    "fast.bf16=true": 3e-2,
    "fast.compile=true": 1e-4,
    "fast.resident=false": None,  # streamed: another batch order, so only the same ballpark
    "++fast.keep_memory=false": 1e-6,  # glibc's allocator settings: the same arithmetic
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fast")


def loss_after_steps(data_dir, tmp_path, *overrides: str) -> float:
    from tornado.train import train

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=small(data_dir, "epochs=1", "trainer.limit_train_batches=6",
                                               "fast.channels_last=false", "fast.bf16=false", *overrides))
    result = train(cfg, output_dir=tmp_path)
    assert result["status"] == "ok"
    return result["history"][0]["train_loss"]


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_switch_keeps_the_loss(switch, data_dir, tmp_path):
    base = loss_after_steps(data_dir, tmp_path / "off")
    fast = loss_after_steps(data_dir, tmp_path / "on", switch)
    tol = SWITCHES[switch]
    if tol is None:
        assert abs(fast - base) / base < 0.5
    else:
        assert abs(fast - base) / base < tol, (switch, base, fast)


# Skipped without a GPU, except where TORNADO_REQUIRE_GPU=1 (the device check): there they run and fail.
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TORNADO_REQUIRE_GPU") != "1",
                               reason="needs a GPU (run by launchers/device_check.sh)")


@needs_gpu
def test_cuda_graph_keeps_the_loss(data_dir, tmp_path):
    base = loss_after_steps(data_dir, tmp_path / "eager", "gpus=1", "fast.cuda_graph=false", "fast.bf16=false")
    graphed = loss_after_steps(data_dir, tmp_path / "graph", "gpus=1", "fast.cuda_graph=true", "fast.bf16=false")
    assert abs(graphed - base) / base < 1e-3, (base, graphed)


def test_blocks_of_batches_keep_the_loss(data_dir, tmp_path):
    """On one device Lightning gets whole chunks (blocks of batches) unless it limits batches: same steps."""
    batchwise = loss_after_steps(data_dir, tmp_path / "batches", "trainer.limit_train_batches=1000000")
    blocks = loss_after_steps(data_dir, tmp_path / "blocks", "trainer.limit_train_batches=1.0")
    assert abs(blocks - batchwise) / batchwise < 1e-6, (batchwise, blocks)


GPU_PLAIN = ("gpus=1", "fast.cuda_graph=false", "fast.bf16=false")  # and channels_last off, as every run here
GPU_SWITCHES = {
    "fast.channels_last=true": 1e-3,
    "fast.bf16=true": 3e-2,
    "++fast.cudnn_benchmark=false": 1e-3,  # on by default on a GPU
}


@pytest.fixture(scope="module")
def gpu_base(data_dir, tmp_path_factory):
    return loss_after_steps(data_dir, tmp_path_factory.mktemp("gpu_base"), *GPU_PLAIN)


@needs_gpu
@pytest.mark.parametrize("switch", list(GPU_SWITCHES))
def test_gpu_switch_keeps_the_loss(switch, data_dir, tmp_path, gpu_base):
    fast = loss_after_steps(data_dir, tmp_path, *GPU_PLAIN, switch)
    assert abs(fast - gpu_base) / gpu_base < GPU_SWITCHES[switch], (switch, gpu_base, fast)


@needs_gpu
def test_cuda_graph_on_blocks_keeps_the_loss(data_dir, tmp_path):
    """A whole epoch as Lightning gets it on one GPU (blocks of batches, graphed) against batch by batch, eager."""
    eager = loss_after_steps(data_dir, tmp_path / "eager", *GPU_PLAIN, "trainer.limit_train_batches=1000000")
    graphed = loss_after_steps(data_dir, tmp_path / "graph", "gpus=1", "fast.bf16=false", "fast.cuda_graph=true",
                               "trainer.limit_train_batches=1.0")
    assert abs(graphed - eager) / eager < 1e-3, (eager, graphed)
