"""Distributed training: 2 CPU processes (gloo) equal one process on the same global batch,
and stop together when one of them diverges."""

from __future__ import annotations

import json
import socket
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from test_training import TINY_PLAIN, _cases, _write_dataset, nan_at_call

from renalseg.errors import NonFiniteLossError
from renalseg.training.config import TrainConfig
from renalseg.training.distributed import DistributedContext, init_distributed, shutdown_distributed
from renalseg.training.loop import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, args: tuple, *, nprocs: int = 2, timeout_s: float = 120.0) -> None:
    """``mp.spawn``, but a process still running after ``timeout_s`` fails the test instead
    of hanging it (a rank left waiting in a collective is the bug these tests guard)."""
    processes = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not processes.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail(f"distributed training still running after {timeout_s:.0f} s: a rank hangs")


def _config(batch_size: int) -> TrainConfig:
    return TrainConfig(stage="seg", network="densebiasnet", network_options=dict(TINY_PLAIN), patch_zyx=(16, 16, 16),
                       window_zyx=(16, 24, 24), batch_size=batch_size, lr=3e-3, max_steps=3, epochs=10,
                       samples_per_epoch=4, foreground_share=0.7)


def _worker(rank: int, world: int, port: int, data: str, run: str) -> None:
    torch.set_num_threads(1)
    context = DistributedContext(rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port)
    init_distributed(context, torch.device("cpu"))
    try:
        losses: list[float] = []
        train(_config(1), run, train_cases=_cases(Path(data)), context=context,
              on_progress=lambda e: losses.append(e.loss) if e.kind == "step" else None)
        if context.is_main:
            (Path(run) / "losses.json").write_text(json.dumps(losses))
    finally:
        shutdown_distributed(context)


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    from renalseg.weights import load_model_files

    data = _write_dataset(tmp_path / "d", [1, 2, 3])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single: list[float] = []
        train(_config(2), tmp_path / "single", train_cases=_cases(data),
              on_progress=lambda e: single.append(e.loss) if e.kind == "step" else None)
    finally:
        torch.set_num_threads(before)
    _spawn(_worker, (2, _free_port(), str(data), str(tmp_path / "ddp")))
    ddp = json.loads((tmp_path / "ddp" / "losses.json").read_text())
    assert len(ddp) == len(single) == 3
    np.testing.assert_allclose(ddp, single, rtol=1e-4, atol=1e-6)
    one, _ = load_model_files(tmp_path / "single" / "last.safetensors")
    two, _ = load_model_files(tmp_path / "ddp" / "last.safetensors")
    for (key, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    assert not (tmp_path / "ddp" / "checkpoint.pt.tmp").exists()


def _diverging_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    """Rank 1's loss turns NaN at step 2; each rank writes the error it stopped with."""
    torch.set_num_threads(1)
    context = DistributedContext(rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port)
    init_distributed(context, torch.device("cpu"))
    try:
        train(_config(1), Path(out) / "run", train_cases=_cases(Path(data)), context=context,
              network_factory=partial(nan_at_call, nan_call=2 if rank == 1 else 0))
    except NonFiniteLossError as err:
        (Path(out) / f"rank{rank}.txt").write_text(str(err))
    finally:
        shutdown_distributed(context)


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    data = _write_dataset(tmp_path / "d", [1, 2])
    _spawn(_diverging_worker, (2, _free_port(), str(data), str(tmp_path)))
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert messages[0] == messages[1]
    assert messages[0].startswith("The loss became nan at step 2 on rank 1 of 2 processes; training stopped.")
