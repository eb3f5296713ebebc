"""The batches a run trains on: which sample goes where, built ahead in worker processes.

Every sample is seeded by (seed, epoch, position) alone: the position is the sample's
place in the epoch (``step × global batch + its place in the step``), and the epoch's
plan (:func:`epoch_plan`) says which case it comes from. So a run is the same with any
number of processes (torchrun) or loader workers, and ``--resume`` continues it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from renalseg.errors import UsageError
from renalseg.training.augment import sample_patch
from renalseg.training.config import TrainConfig
from renalseg.training.data import TrainingCase
from renalseg.training.distributed import DistributedContext, rank_positions

__all__ = ["StepSchedule", "epoch_plan", "make_batch", "BatchLoader"]


@dataclass(frozen=True)
class StepSchedule:
    """How an epoch's samples are split into steps, and which of each step's are this process's.

    Attributes:
        global_batch: samples per optimiser step over all processes.
        steps_per_epoch: steps of an epoch (its last one may reach past the samples:
            the plan then wraps around).
        rank_positions: this process's places within a step, ``0 … global_batch − 1``.

    Example:
        >>> schedule = StepSchedule.of(TrainConfig(batch_size=2, samples_per_epoch=7), 10,
        ...                            DistributedContext(rank=1, world_size=2))
        >>> schedule.global_batch, schedule.steps_per_epoch, schedule.positions(1)
        (4, 2, [6, 7])
    """

    global_batch: int
    steps_per_epoch: int
    rank_positions: tuple[int, ...]

    @classmethod
    def of(cls, config: TrainConfig, n_cases: int, context: DistributedContext) -> StepSchedule:
        """The schedule of ``config`` over ``n_cases`` training cases for this process."""
        global_batch = config.batch_size * context.world_size
        samples_per_epoch = config.samples_per_epoch or n_cases
        return cls(global_batch, math.ceil(samples_per_epoch / global_batch),
                   tuple(rank_positions(context, config.batch_size)))

    def positions(self, step: int) -> list[int]:
        """The epoch positions of this process's samples at ``step`` of the epoch."""
        return [step * self.global_batch + p for p in self.rank_positions]


def epoch_plan(n_cases: int, n_samples: int, *, seed: int, epoch: int) -> np.ndarray:
    """Case index of each sample position of an epoch: shuffled passes over the cases.

    The plan depends only on (seed, epoch), never on the number of processes.

    Example:
        >>> plan = epoch_plan(3, 7, seed=0, epoch=0)
        >>> len(plan), sorted(plan[:3].tolist())
        (7, [0, 1, 2])
    """
    rng = np.random.default_rng([seed, epoch, 1])
    passes = math.ceil(n_samples / n_cases)
    return np.concatenate([rng.permutation(n_cases) for _ in range(passes)])[:n_samples]


def make_batch(
    cases: Sequence[TrainingCase],
    plan: np.ndarray,
    positions: Sequence[int],
    config: TrainConfig,
    *,
    epoch: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The samples at ``positions`` of an epoch's plan, stacked.

    Returns:
        float32 ``(B, 1, Z, Y, X)`` normalised images and int64 ``(B, Z, Y, X)``
        class indices (``None`` for the dae stage).
    """
    images, labels = [], []
    for position in positions:
        rng = np.random.default_rng([config.seed, epoch, int(position)])
        case = cases[int(plan[int(position) % len(plan)])]
        image, label = sample_patch(case, config.patch_zyx, rng, foreground_share=config.foreground_share,
                                    hard_negative_share=config.hard_negative_share,
                                    class_share=config.class_share, mimic_share=config.mimic_share,
                                    augment=config.augment,
                                    normalization=config.normalization)
        images.append(image)
        labels.append(label)
    image_batch = np.stack(images)[:, None]
    if config.stage == "dae" or any(label is None for label in labels):
        return image_batch, None
    return image_batch, np.stack(labels).astype(np.int64)


#: the training cases of the run whose loader workers are being forked: the workers
#: inherit them (copy-on-write, nothing pickled), so a worker's batch is built from the
#: very arrays the main process holds
_LOADER_CASES: Sequence[TrainingCase] = ()


def _loader_batch(plan: np.ndarray, positions: Sequence[int], config: TrainConfig,
                  epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
    return make_batch(_LOADER_CASES, plan, positions, config, epoch=epoch)


class BatchLoader:
    """The batches of the coming steps, built ahead in worker processes (``--loader-workers``).

    On a GPU the patch sampling and augmentation (0.06 s per 96 × 96 × 48 patch,
    0.19 s per 152 × 152 × 64 on one core of a 2-core AMD EPYC) would leave the
    device idle between steps; ``workers`` forked processes build the next
    ``2 × workers`` steps' batches while the device trains. Every sample is seeded by
    (seed, epoch, position) alone, so the batches — and the run, resume included — are
    the same with any number of workers (tested). With ``workers == 0`` each batch is
    built in this process when it is needed.

    Workers are forked (they inherit the cases without copying them); where ``fork``
    does not exist (Windows) ask for 0 workers.

    Raises:
        UsageError: a negative worker count, or workers where ``fork`` does not exist.
    """

    def __init__(self, cases: Sequence[TrainingCase], config: TrainConfig, schedule: StepSchedule,
                 workers: int = 0) -> None:
        import multiprocessing

        self.cases, self.config, self.schedule, self.workers = cases, config, schedule, workers
        self.pending: dict[tuple[int, int], Future] = {}
        self.pool: ProcessPoolExecutor | None = None
        if workers < 0:
            raise UsageError(f"--loader-workers {workers}: pass 0 (build batches in this process) or more.")
        if workers:
            if "fork" not in multiprocessing.get_all_start_methods():
                raise UsageError("--loader-workers needs the 'fork' start method, which this platform lacks; "
                                 "pass --loader-workers 0.")
            global _LOADER_CASES
            _LOADER_CASES = cases
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))

    def batch(self, plan: np.ndarray, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The batch of ``step`` of ``epoch``; asks the workers for the steps after it."""
        if self.pool is None:
            return make_batch(self.cases, plan, self.schedule.positions(step), self.config, epoch=epoch)
        for ahead in range(step, min(step + 2 * self.workers, self.schedule.steps_per_epoch)):
            if (epoch, ahead) not in self.pending:
                self.pending[(epoch, ahead)] = self.pool.submit(_loader_batch, plan, self.schedule.positions(ahead),
                                                                self.config, epoch)
        return self.pending.pop((epoch, step)).result()  # submitted above, if not before

    def close(self) -> None:
        """Stop the workers and forget the batches built ahead."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending.clear()
