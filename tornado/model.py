"""The paper's CNN (a plain nn.Module) and the thin LightningModule that trains it."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from tornado.errors import TornadoError
from tornado.metrics import prior_shift


class StormCNN(nn.Module):
    """Conv 8/16/32 (5x5, same, ReLU) with 2x2 average pooling after the first two; one logit out.

    `pool3=True` pools after the third convolution too (flatten 512), as the paper's code did.
    """

    def __init__(self, pool3: bool = False, dropout: float = 0.0, in_channels: int = 3, size: int = 32):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 8, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(),
        ]
        side = size // 4
        if pool3:
            layers.append(nn.AvgPool2d(2))
            side //= 2
        layers.append(nn.Flatten())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(32 * side * side, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))


class StormModule(pl.LightningModule):
    """Adam on BCE-with-logits. Manual optimisation so the whole step can be compiled or CUDA-graphed.

    Training loss and accuracy are summed on the device (inside the CUDA graph when there is one) and logged
    once per epoch: no host sync per step. On one device the step calls backward and the optimiser directly
    (Lightning's `manual_backward` and optimiser wrapper run hooks this module does not use, ~0.2 ms a step on
    a CPU core) and only advances Lightning's step count; under DDP it keeps Lightning's path.
    """

    def __init__(self, pool3: bool = False, dropout: float = 0.0, lr: float = 1e-3,
                 scaler_mean: list[float] | None = None, scaler_std: list[float] | None = None,
                 channels_last: bool = False, bf16: bool = False, compile: bool = False,
                 cuda_graph: bool = False, trained_rate: float | None = None, climatology: float | None = None,
                 pos_weight: float = 1.0, label: dict | None = None):
        super().__init__()  # label: the rule the targets were made by (data.label), for predict's labels
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = StormCNN(pool3=pool3, dropout=dropout)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # not registered as a submodule: the weights are net's, saved once under net.*
        self.__dict__["_forward"] = torch.compile(self.net) if compile else self.net
        # moves to the module's device with it (a CUDA graph needs it there); not in the state dict, so that
        # checkpoints without it load; None: the plain loss
        self.register_buffer("_pos_weight", torch.tensor([float(pos_weight)]) if pos_weight != 1 else None,
                             persistent=False)
        self._graph: _GraphedStep | None = None
        self._loss_sum: torch.Tensor | None = None  # sum of loss * n over the epoch, on the device
        self._correct: torch.Tensor | None = None   # correct predictions over the epoch, on the device
        self._count = 0                             # samples this epoch (known on the host)
        self.history: list[dict] = []               # per epoch: train_loss, train_acc (kept in checkpoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def calibrated(self, prob: np.ndarray) -> np.ndarray:
        """Probabilities of `net` moved from the base rate it was trained at (`trained_rate`: positives
        oversampled by balance copies or weighted by pos_weight) to nature's (`climatology`); as they are
        when no rates are stored."""
        h = self.hparams
        if h.get("trained_rate") is None or h.get("climatology") is None:
            return np.asarray(prob, dtype=np.float64)
        return prior_shift(prob, h.trained_rate, h.climatology)

    def configure_optimizers(self):
        # fused: two kernels per step instead of ~10 per parameter (and graph-safe); the update is Adam's
        capturable = bool(self.hparams.cuda_graph) and torch.cuda.is_available()
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True, capturable=capturable)

    def _autocast(self):
        if self.hparams.bf16:
            # the weight-cast cache must be off for CUDA-graph capture
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def loss_and_logits(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits = self._forward(x)
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=self._pos_weight), logits

    def on_train_epoch_start(self) -> None:
        if self._loss_sum is None or self._loss_sum.device != self.device:
            self._loss_sum = torch.zeros((), device=self.device)
            self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        else:  # in place: a captured CUDA graph adds into these very buffers
            self._loss_sum.zero_()
            self._correct.zero_()
        self._count = 0

    def accumulate(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add this batch's loss * n and correct count to the epoch sums, on the device."""
        with torch.no_grad():  # five kernels (labels are 0 or 1): they are in every step of the CUDA graph
            self._loss_sum.add_(loss.detach(), alpha=y.shape[0])
            self._correct.add_((logits.detach() > 0).eq(y).sum())

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        if x.ndim == 5:  # a block of batches (StormDataModule on one device): an optimizer step for each
            for xb, yb in zip(x.unbind(0), y.unbind(0)):
                self._step(opt, xb, yb)
        else:
            self._step(opt, x, y)
        return None

    def _step(self, opt, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._use_graph(x):
            _counted(opt, self._graph.step, x, y)  # forward, backward, Adam and the sums, replayed
        elif self.trainer.world_size > 1:
            opt.zero_grad(set_to_none=True)
            loss, logits = self.loss_and_logits(x, y)
            self.manual_backward(loss)
            opt.step()
            self.accumulate(loss, logits, y)
        else:
            opt.optimizer.zero_grad(set_to_none=True)
            loss, logits = self.loss_and_logits(x, y)
            loss.backward()
            _counted(opt, opt.optimizer.step)
            self.accumulate(loss, logits, y)
        self._count += y.shape[0]

    def on_train_epoch_end(self) -> None:
        sums = torch.stack([self._loss_sum, self._correct.float(), self._loss_sum.new_tensor(self._count)])
        s = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss_sum, correct, samples = s.tolist()  # the one host sync of an epoch
        loss, acc = loss_sum / max(samples, 1), correct / max(samples, 1)
        if not math.isfinite(loss):  # refused before the epoch's checkpoint is written
            raise TornadoError(f"training diverged: the mean loss of epoch {self.current_epoch + 1} is {loss} "
                               f"(lr={self.hparams.lr}); lower lr, or look for NaN or inf in the inputs")
        # the loggers' x axis: optimiser steps (Lightning's own counts the blocks of batches it sees)
        self.log_dict({"step": float(self.trainer.global_step), "epoch": float(self.current_epoch)})
        self.log("train_loss", loss, on_epoch=True, sync_dist=False)
        self.log("train_acc", acc, on_epoch=True, sync_dist=False)
        self.history.append({"epoch": self.current_epoch, "train_loss": loss, "train_acc": acc,
                             "samples": int(samples)})  # trained on, all ranks (batch limits included)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("history", []))
        # checkpoints of earlier versions hold the weights a second time, under _forward.* (or, compiled,
        # _forward._orig_mod.*): net.* is the one copy loaded
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("_forward.")]:
            del state[key]

    def _use_graph(self, x: torch.Tensor) -> bool:
        if not self.hparams.cuda_graph or x.device.type != "cuda" or self.trainer.world_size > 1:
            return False
        if self._graph is None:
            opt = self.optimizers().optimizer
            self._graph = _GraphedStep(self, opt, x.shape)
        return tuple(x.shape) == self._graph.shape


def _counted(lightning_opt, step, *args):
    """Run an optimiser step outside Lightning's wrapper, advancing its step count as the wrapper would."""
    getattr(lightning_opt, "_on_before_step", _nothing)()
    out = step(*args)
    getattr(lightning_opt, "_on_after_step", _nothing)()
    return out


def _nothing() -> None:
    return None


class _GraphedStep:
    """Forward, backward, Adam step and the epoch sums captured once in a CUDA graph, replayed per batch.

    The warm-up steps that capture needs are undone (weights, optimiser state and sums restored), so the
    graphed run follows the same trajectory as the eager one. Batches of another shape (the last,
    partial one) run eagerly with the same optimiser.
    """

    def __init__(self, module: StormModule, opt: torch.optim.Optimizer, shape):
        self.shape = tuple(shape)
        self.module, self.opt = module, opt
        dev = module.device
        self.x = torch.zeros(self.shape, device=dev)
        if module.hparams.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.zeros(self.shape[0], device=dev)
        params = [p.detach().clone() for p in module.parameters()]
        # optimiser state from a resumed checkpoint is restored; state the warm-up creates is zeroed
        saved_state = {id(p): {k: v.clone() for k, v in st.items() if torch.is_tensor(v)}
                       for p, st in opt.state.items()}
        sums = (module._loss_sum.clone(), module._correct.clone())
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self._eager()
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss, self.logits = self._eager(zero=False)
        with torch.no_grad():
            for p, saved in zip(module.parameters(), params):
                p.copy_(saved)
            for p, state in opt.state.items():
                old = saved_state.get(id(p), {})
                for k, v in state.items():
                    if torch.is_tensor(v) and k in old:
                        v.copy_(old[k])
                    elif torch.is_tensor(v):
                        v.zero_()
            module._loss_sum.copy_(sums[0])
            module._correct.copy_(sums[1])

    def _eager(self, zero: bool = True):
        if zero:
            self.opt.zero_grad(set_to_none=True)
        loss, logits = self.module.loss_and_logits(self.x, self.y)
        loss.backward()
        self.opt.step()
        self.module.accumulate(loss, logits, self.y)
        return loss, logits

    def step(self, x: torch.Tensor, y: torch.Tensor):
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss, self.logits
