"""The trainer: both stages, checkpoints, exact ``--resume``, best-by-validation.

Stage ``dae`` trains the convolutional denoising autoencoder (dropout corruption of
the input, MSE against the clean input) on unlabelled patches; stage ``seg`` trains
DenseBiasNet, with the frozen DAE encoder's features embedded (DPA) unless the plain
network is chosen, under the HRA loss. Paper defaults: Adam, lr 1e-4, betas
(0.9, 0.999), weight decay 1e-5, batch 1, 200 epochs (He et al., MedIA 2020).

A run folder holds:

- ``config.json``: the :class:`~renalseg.training.config.TrainConfig` (also inside
  every checkpoint);
- ``checkpoint.pt``: model, optimiser and position (epoch, step) — ``--resume``
  continues from it exactly, because every sample's augmentation is seeded by
  (seed, epoch, position) and nothing else is random. It is written every
  ``checkpoint_minutes``, at the end, and when the run is interrupted (Ctrl-C, or the
  SIGTERM a batch scheduler sends before it kills a job): the step under way finishes,
  the checkpoint is written, and the run stops without validating;
- ``metrics.jsonl`` and ``metrics.csv``: one row per epoch (loss, validation score);
- ``best.safetensors`` + ``best.json``: the best-by-validation weights and card in
  the shipped format (``renalseg segment --weights``), ``last.*`` the latest; for the
  DAE stage ``dae.safetensors`` (+ ``.json``), the encoder for ``--encoder``.

This module only orchestrates; each part has its own: the recipe
(:mod:`~renalseg.training.config`), the batches (:mod:`~renalseg.training.batches`),
the network (:mod:`~renalseg.training.network`), one optimiser step
(:mod:`~renalseg.training.steps`), the checkpoint and weights files
(:mod:`~renalseg.training.checkpoints`), validation and the metrics log
(:mod:`~renalseg.training.metrics_log`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from renalseg.errors import DataLayoutError
from renalseg.io.output import atomic_write_json
from renalseg.training.batches import BatchLoader, StepSchedule, epoch_plan, make_batch
from renalseg.training.checkpoints import (
    CHECKPOINT_NAME,
    RunPosition,
    open_checkpoint,
    restore_position,
    save_weights,
    training_record,
    validation_fingerprint,
    write_checkpoint,
)
from renalseg.training.config import RESUMABLE_FIELDS, TrainConfig
from renalseg.training.data import TrainingCase
from renalseg.training.distributed import DistributedContext, all_reduce_mean, barrier
from renalseg.training.metrics_log import append_metrics, dice_per_class, truncate_metrics, validate
from renalseg.training.network import build_training_network, logits_module, train_mode
from renalseg.training.steps import bfloat16_pays, dae_step, seg_step, segmentation_loss

if TYPE_CHECKING:  # pragma: no cover
    import torch

# the trainer's public names; each is defined in the module that owns it
__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "RESUMABLE_FIELDS",
    "CHECKPOINT_NAME",
    "epoch_plan",
    "make_batch",
    "dice_per_class",
    "train",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainProgress:
    """What the trainer reports to ``on_progress`` (the CLI draws it).

    ``kind`` is ``"step"`` (after each optimiser step), ``"validation"`` or
    ``"epoch"`` (after each epoch, with the validation score when validated).
    """

    kind: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float | None = None
    score: float | None = None
    score_name: str = ""
    best_score: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


#: :attr:`TrainResult.stopped_early` of a run stopped by SIGINT or SIGTERM
INTERRUPTED = "interrupted (its checkpoint holds the last step)"


@dataclass(frozen=True)
class TrainResult:
    """Where a run ended and what it produced."""

    out_dir: Path
    steps: int
    epochs_done: int
    best_score: float | None
    score_name: str
    best_weights: Path | None
    last_weights: Path | None
    wall_s: float
    stopped_early: str | None = None
    #: the signal that stopped the run (``"SIGINT"``, ``"SIGTERM"``), if one did
    interrupted_by: str | None = None


def train(
    config: TrainConfig,
    out_dir: Path | str,
    *,
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase] = (),
    resume: bool = False,
    context: DistributedContext | None = None,
    device: str = "cpu",
    on_progress: Callable[[TrainProgress], None] | None = None,
    network_factory: Callable[[TrainConfig], torch.nn.Module] | None = None,
    loader_workers: int = 0,
) -> TrainResult:
    """Train one stage; returns where the run ended.

    Args:
        config: the run's settings (on ``resume`` only :data:`RESUMABLE_FIELDS` may differ
            from the stored ones).
        out_dir: the run folder (created; must not hold a run unless ``resume``).
        train_cases: training cases on the model grid (labelled for ``seg``): any sequence;
            one with a true ``made_on_demand`` attribute builds each case when a batch asks
            for it (e.g. a new phantom for each sample) and is not walked up front.
        val_cases: validation cases (never trained on); none disables best-by-validation
            (the last weights are then also the best).
        resume: continue the run in ``out_dir`` from its checkpoint, exactly.
        context: this process's place in a torchrun job (default: single process).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun, CUDA uses the local rank).
        on_progress: called with :class:`TrainProgress` events (rank 0 only).
        network_factory: builds the network from the config (default:
            :func:`~renalseg.training.network.build_training_network`); tests pass tiny stand-ins.
        loader_workers: processes building the coming batches ahead
            (:class:`~renalseg.training.batches.BatchLoader`); the run is the same with
            any number; 0 builds each batch when it is needed.

    Raises:
        UsageError: an existing run without ``resume``, no run to resume, changed options.
        DataLayoutError: no training cases, or unlabelled cases for the seg stage.
        NonFiniteLossError: the loss became NaN or infinite (on every process alike).
    """
    started = time.monotonic()
    context = context or DistributedContext()
    _check_cases(config, train_cases, val_cases)
    # before anything is written: a bad worker count leaves no run folder behind (the
    # worker processes themselves start with the first batch asked for)
    schedule = StepSchedule.of(config, len(train_cases), context)
    loader = BatchLoader(train_cases, config, schedule, loader_workers)
    try:
        trainer = _start(config, Path(out_dir), resume=resume, device=device, network_factory=network_factory,
                         setup=_Setup(context, loader, schedule, train_cases, val_cases, on_progress, started))
        with _stop_on_signals(trainer):
            trainer.run_epochs()
    finally:
        loader.close()
    return trainer.finish()


@contextmanager
def _stop_on_signals(trainer: _Trainer) -> Iterator[None]:
    """SIGINT and SIGTERM ask ``trainer`` to stop after the step under way (with a
    checkpoint); a second one stops at once. Only where handlers can be set (the main
    thread); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def ask(number: int, frame: Any) -> None:
        if trainer.interrupted is not None:  # asked twice: stop now
            signal.signal(number, previous[number])
            signal.raise_signal(number)
            return
        name = signal.Signals(number).name
        trainer.interrupted = name
        logger.warning("%s: finishing step %d, then writing the checkpoint (%s again stops at once).",
                       name, trainer.position.global_step + 1, name)

    for number in previous:
        signal.signal(number, ask)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _check_cases(config: TrainConfig, train_cases: Sequence[TrainingCase],
                 val_cases: Sequence[TrainingCase]) -> None:
    if not train_cases:
        raise DataLayoutError("No training cases (all went to validation?). Add cases or lower --val-fraction.")
    if config.stage == "seg":
        # cases made when a batch asks for them (phantoms made afresh) are not made here
        made = getattr(train_cases, "made_on_demand", False)
        walked = val_cases if made else (*train_cases, *val_cases)
        unlabelled = [c.case_id for c in walked if c.label is None]
        if unlabelled:
            raise DataLayoutError(f"--stage seg needs labels; no label for case(s) {', '.join(unlabelled[:5])}.")
        if config.mimic_share > 0 and not made and not any(c.mimics is not None for c in train_cases):
            raise DataLayoutError("--mimic-share centres patches on phantom tissue (spleen, bowel, cyst ...) and "
                                  "none of the training cases has a tissue map (DATA/tissue/<case>); drop "
                                  "--mimic-share or add the maps.")


@dataclass(frozen=True)
class _Setup:
    """What a run is given: its place in the job, its data and whom to tell."""

    context: DistributedContext
    loader: BatchLoader
    schedule: StepSchedule
    train_cases: Sequence[TrainingCase]
    val_cases: Sequence[TrainingCase]
    on_progress: Callable[[TrainProgress], None] | None
    started: float


def _start(config: TrainConfig, run: Path, *, resume: bool, device: str,
           network_factory: Callable[[TrainConfig], torch.nn.Module] | None, setup: _Setup) -> _Trainer:
    """The network, optimiser and position of a new run, or of the run in ``run`` resumed."""
    import torch

    context = setup.context
    config, state = open_checkpoint(run, config, resume=resume)
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and context.distributed:
        torch_device = torch.device("cuda", context.local_rank)
    network = (network_factory(config) if network_factory is not None
               else build_training_network(config, load_weights=state is None))
    network.to(torch_device)
    train_mode(network)
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=config.lr,
                                 betas=tuple(config.betas), weight_decay=config.weight_decay)  # type: ignore[arg-type]
    fingerprint = validation_fingerprint(setup.val_cases)
    position = RunPosition()
    if state is not None:
        position = restore_position(state, network, optimizer, config, val_fingerprint=fingerprint, run=run)
        if context.is_main:
            truncate_metrics(run, position.global_step)
    if context.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", config.to_dict())
    model: torch.nn.Module = network if config.stage == "dae" else logits_module(network)
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None)
    total_steps = setup.schedule.steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    amp = config.amp and bfloat16_pays(torch_device)
    if config.amp and not amp and context.is_main:
        logger.warning("--amp: the CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), where a bfloat16 "
                       "forward pass is many times slower than float32; the run trains in float32.")
    return _Trainer(config, run, setup, torch_device, network, model, optimizer,
                    None if config.stage == "dae" else segmentation_loss(config),
                    fingerprint, total_steps, position, start_step=position.global_step, amp=amp)


@dataclass
class _Trainer:
    """One start of a run (new or resumed) and where it stands; its methods are the loop's parts."""

    config: TrainConfig
    run: Path
    setup: _Setup
    device: torch.device
    network: torch.nn.Module
    #: what the steps call: the network (dae) or its logits, DDP-wrapped under torchrun
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[Any, Any], Any] | None
    val_fingerprint: str
    total_steps: int
    position: RunPosition
    #: the global step this start began at (the ETA counts the steps since)
    start_step: int
    #: the forward pass in bfloat16: ``--amp`` where it pays (:func:`bfloat16_pays`)
    amp: bool = False
    last_checkpoint: float = field(default_factory=time.monotonic)
    stopped: str | None = None
    #: the signal that asked the run to stop (``"SIGTERM"``), on this process
    interrupted: str | None = None
    last_row: dict[str, Any] = field(default_factory=dict)

    @property
    def score_name(self) -> str:
        return "val_mse" if self.config.stage == "dae" else "val_dice"

    @property
    def best_path(self) -> Path:
        return self.run / ("dae.safetensors" if self.config.stage == "dae" else "best.safetensors")

    def elapsed(self) -> float:
        return time.monotonic() - self.setup.started

    def emit(self, kind: str, *, loss: float | None = None, score: float | None = None) -> None:
        if self.setup.on_progress is None or not self.setup.context.is_main:
            return
        p = self.position
        done = p.global_step - self.start_step
        eta = None if done == 0 else self.elapsed() / done * (self.total_steps - p.global_step)
        self.setup.on_progress(TrainProgress(
            kind, p.epoch, self.config.epochs, p.global_step, self.total_steps, loss=loss, score=score,
            score_name="" if kind == "step" else self.score_name, best_score=p.best_score,
            elapsed_s=self.elapsed(), eta_s=eta))

    def run_epochs(self) -> None:
        """Train until the epochs, ``max_steps`` or the time limit are done."""
        p, config, schedule = self.position, self.config, self.setup.schedule
        while p.epoch < config.epochs and p.global_step < self.total_steps and self.stopped is None:
            plan = epoch_plan(len(self.setup.train_cases), schedule.steps_per_epoch * schedule.global_batch,
                              seed=config.seed, epoch=p.epoch)
            epoch_started = time.monotonic()
            losses = self.train_steps(plan)
            epoch_done = p.step_in_epoch >= schedule.steps_per_epoch
            if epoch_done:
                p.epoch += 1
                p.step_in_epoch = 0
            self.end_epoch(losses, epoch_done=epoch_done, epoch_started=epoch_started)

    def train_steps(self, plan: np.ndarray) -> list[float]:
        """The rest of the epoch's steps, or fewer when the run must stop; their losses."""
        p = self.position
        losses: list[float] = []
        while p.step_in_epoch < self.setup.schedule.steps_per_epoch:
            images, labels = self.setup.loader.batch(plan, p.epoch, p.step_in_epoch)
            losses.append(self.step(images, labels))
            p.step_in_epoch += 1
            p.global_step += 1
            self.emit("step", loss=losses[-1])
            if p.global_step >= self.total_steps:
                if self.config.max_steps is not None and p.global_step >= self.config.max_steps:
                    self.stopped = "max steps"
                break
            if self.out_of_time():
                self.stopped = "time limit"
                break
            if self.asked_to_stop():
                self.stopped = INTERRUPTED
                break
            if time.monotonic() - self.last_checkpoint > self.config.checkpoint_minutes * 60:
                self.checkpoint()
        return losses

    def step(self, images: np.ndarray, labels: np.ndarray | None) -> float:
        import torch

        p = self.position
        x = torch.from_numpy(images).to(self.device)
        if self.config.stage == "dae":
            return dae_step(self.model, self.network, self.optimizer, x,
                            self.setup.schedule.positions(p.step_in_epoch), config=self.config, epoch=p.epoch,
                            step=p.global_step + 1, context=self.setup.context, amp=self.amp)
        y = torch.from_numpy(labels).to(self.device)  # type: ignore[arg-type]
        return seg_step(self.model, self.optimizer, x, y, self.loss_fn,  # type: ignore[arg-type]
                        amp=self.amp, step=p.global_step + 1, context=self.setup.context)

    def out_of_time(self) -> bool:
        """Past ``time_limit_min`` on any process: every process must stop after the same step."""
        if self.config.time_limit_min is None:
            return False
        late = self.elapsed() > self.config.time_limit_min * 60
        return all_reduce_mean(float(late), self.setup.context, self.device) > 0

    def asked_to_stop(self) -> bool:
        """A stop signal reached any process: every process stops after the same step."""
        return all_reduce_mean(float(self.interrupted is not None), self.setup.context, self.device) > 0

    def end_epoch(self, losses: list[float], *, epoch_done: bool, epoch_started: float) -> None:
        """Validate when due, checkpoint when due, log the epoch's row."""
        p, config = self.position, self.config
        finished = p.epoch >= config.epochs or p.global_step >= self.total_steps or self.stopped is not None
        row: dict[str, Any] = {
            "epoch": p.epoch, "step": p.global_step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "lr": config.lr, "epoch_s": round(time.monotonic() - epoch_started, 2),
            "wall_s": round(p.wall_before_s + self.elapsed(), 1),
        }
        interrupted = self.stopped == INTERRUPTED  # out quickly: no validation, the checkpoint only
        if self.setup.val_cases and not interrupted and (finished or (epoch_done and p.epoch % config.val_every == 0)):
            row.update(self.validate())
            barrier(self.setup.context)
        row["best_score"] = p.best_score
        if finished or (epoch_done and p.epoch % config.checkpoint_every == 0):
            self.checkpoint()
        if self.setup.context.is_main:
            append_metrics(self.run, row)
        self.emit("epoch", loss=row["train_loss"], score=row.get(self.score_name))
        self.last_row = row

    def validate(self) -> dict[str, float]:
        """Rank 0: validation metrics; better ones save the best weights. Other ranks: none."""
        if not self.setup.context.is_main:
            return {}
        metrics = validate(self.network, self.config, self.setup.val_cases, self.device)
        score, best = metrics[self.score_name], self.position.best_score
        if best is None or (score > best if self.config.stage == "seg" else score < best):
            self.position.best_score = score
            save_weights(self.network, self.config, self.best_path, metrics=metrics, training=self.record())
        self.emit("validation", score=score)
        return metrics

    def checkpoint(self) -> None:
        if self.setup.context.is_main:
            write_checkpoint(self.run / CHECKPOINT_NAME, config=self.config, network=self.network,
                             optimizer=self.optimizer, position=self.position, val_fingerprint=self.val_fingerprint,
                             wall_s=self.position.wall_before_s + self.elapsed())
        self.last_checkpoint = time.monotonic()

    def record(self) -> dict[str, Any]:
        """The model card's ``training`` entry as of now."""
        return training_record(self.config, self.position, wall_s=self.position.wall_before_s + self.elapsed(),
                               processes=self.setup.context.world_size, train_cases=len(self.setup.train_cases),
                               val_case_ids=[c.case_id for c in self.setup.val_cases])

    def finish(self) -> TrainResult:
        """Save the last weights (and the best, without validation); where the run ended."""
        best = last = None
        if self.setup.context.is_main:
            last, best = self.save_final_weights()
        barrier(self.setup.context)
        p = self.position
        return TrainResult(self.run, p.global_step, p.epoch, p.best_score, self.score_name, best, last,
                           p.wall_before_s + self.elapsed(), self.stopped, self.interrupted)

    def save_final_weights(self) -> tuple[Path, Path | None]:
        summary = {self.score_name: self.last_row.get(self.score_name)} if self.setup.val_cases else {}
        last = save_weights(self.network, self.config,
                            self.run / ("dae_last.safetensors" if self.config.stage == "dae" else "last.safetensors"),
                            metrics=summary, training=self.record())
        if not self.setup.val_cases and not self.best_path.exists():
            # no validation: the last weights are the best we know
            save_weights(self.network, self.config, self.best_path, metrics=summary, training=self.record())
        if self.best_path.exists():
            return last, self.best_path
        # validated, but the best weights are not in this folder (a checkpoint copied
        # without them that has not beaten its best score since): never pass the last
        # weights off as the best
        logger.warning("%s: no %s (validation has not beaten the checkpoint's best score %s since it was "
                       "copied here); the last weights are %s.", self.run, self.best_path.name,
                       self.position.best_score, last)
        return last, None
