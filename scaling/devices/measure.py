"""`--measure-comm`: real all-reduces of a model's bucket sizes between N local processes (gloo on the CPU,
NCCL on GPUs), fitted to latency and bus bandwidth; DDP's own synchronization of a stand-in module with the
model's parameter sizes; and how much slower each device's own work runs when all N compute at once
(scaling/devices/comm.py holds the model these measurements feed)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict

from scaling.config import ConfigError
from scaling.devices.comm import (
    MIB,
    CommMeasurement,
    ComputeLoad,
    Contention,
    DDPCost,
    fit_alpha_beta,
)


def measurement_sizes(buckets: Sequence[int]) -> list[int]:
    """The model's bucket sizes plus a ladder from 4 bytes to the largest bucket (so the fit sees both
    the latency- and the bandwidth-bound end), each a whole number of float32 elements."""
    largest = max([*buckets, 4 * MIB])
    ladder = [4 ** k for k in range(1, 20) if 4 ** k <= largest]
    return sorted({max(4, (int(s) // 4) * 4) for s in [*ladder, largest, *buckets]})


def measure_allreduce(processes: int, sizes: Sequence[int], device: str = "cpu", threads: int = 1,
                      min_time_s: float = 0.2, repeats: int = 5, timeout_s: float = 600,
                      parameter_bytes: Sequence[int] | None = None, compute: ComputeLoad | None = None
                      ) -> CommMeasurement:
    """Time float32 all-reduces of `sizes` bytes across `processes` local processes (gloo on the CPU, NCCL on
    `cuda`), and fit latency and bus bandwidth. Each size: a warm-up, then `repeats` timings of a loop of
    back-to-back all-reduces lasting about `min_time_s`; a timing is the slowest rank's, the result the
    median of the repeats. With `parameter_bytes` (a model's per-parameter gradient bytes, registration
    order), also what DDP adds for that layout (`DDPCost`), timed the same way; with `compute`, each device's
    own work alone and all at once (`Contention`)."""
    import torch.multiprocessing as mp

    if processes < 2:
        raise ConfigError("measuring an all-reduce needs at least 2 processes")
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < processes:
            raise ConfigError(f"--measure-comm with {processes} processes on GPUs needs {processes} GPUs here, "
                              f"found {torch.cuda.device_count()}")
    start = time.perf_counter()
    layout = [int(b) for b in parameter_bytes] if parameter_bytes else []
    load = asdict(compute) if compute is not None else None
    args = (processes, list(sizes), device, threads, min_time_s, repeats, layout, load)
    for attempt in range(2):
        try:
            record = _spawn(mp, args, timeout_s)
            break
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:  # a worker failed before the end
            if attempt:
                raise RuntimeError(f"all-reduce measurement failed: {err}") from None
    backend = "nccl" if device == "cuda" else "gloo"
    seconds = record["allreduce"]
    ddp = None
    if record.get("ddp"):
        ddp = DDPCost(processes, tuple(layout), max(0.0, record["ddp"]["sync"] - record["ddp"]["nosync"]),
                      max(0.0, record["ddp"]["nosync"] - record["ddp"]["plain"]))
    contention = None
    if record.get("contention"):
        contention = Contention(processes, compute.batch, record["contention"]["alone"],
                                record["contention"]["together"])
    measurement = CommMeasurement(processes, backend, device, [int(s) for s in sizes], seconds,
                                  elapsed_s=time.perf_counter() - start, threads=threads, ddp=ddp,
                                  contention=contention)
    measurement.fit = fit_alpha_beta(measurement.sizes, seconds, processes)
    return measurement


def _spawn(mp, args: tuple, timeout_s: float) -> dict:
    """Run the workers; rank 0's record. A worker that dies after rank 0 has written the record (gloo's
    rare abort while tearing its threads down, tests/conftest.py) does not lose the measurement."""
    with tempfile.TemporaryDirectory(prefix="scaling-comm-") as tmp:
        out = os.path.join(tmp, "times.json")
        processes, *rest = args
        context = mp.start_processes(_worker, args=(processes, _free_port(), *rest, out), nprocs=processes,
                                     join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    raise RuntimeError(f"all-reduce measurement did not finish in {timeout_s:.0f} s")
        except mp.ProcessExitedException:
            if not os.path.isfile(out):
                raise
            for process in context.processes:  # the others may still wait for the one that died
                if process.is_alive():
                    process.kill()
        with open(out) as handle:
            return json.load(handle)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stand_in(parameter_bytes: list[int], device):
    """The stand-in module for DDPCost: float32 parameters of the model's sizes, in its order, and a loss
    whose backward costs next to nothing (d loss / d p = scale for every element)."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.zeros(max(1, b // 4), device=device)) for b in parameter_bytes])

        def forward(self, scale):
            return sum((p * scale).sum() for p in self.weights)

    return StandIn()


def _worker(rank: int, processes: int, port: int, sizes: list[int], device: str, threads: int,
            min_time_s: float, repeats: int, parameter_bytes: list[int], load: dict | None, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    target = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize(target)

    def timed(action, iterations: int, alone: int | None = None) -> list[float]:
        """Seconds per call of `action` on every rank (all at once, or only rank `alone` while the others
        wait in a barrier, which takes no CPU); the other ranks' entries are 0 in a turn alone."""
        dist.barrier()
        sync()
        elapsed = torch.zeros(processes, dtype=torch.float64, device=target)
        if alone is None or alone == rank:
            begin = time.perf_counter()
            for _ in range(iterations):
                action()
            sync()
            elapsed[rank] = (time.perf_counter() - begin) / iterations
        dist.all_reduce(elapsed)  # every rank's time, on every rank
        return elapsed.tolist()

    def agreed_iterations(action) -> int:
        first = max(timed(action, 2))  # warm-up (connections, allocations, DDP's bucket rebuild) and an estimate
        iterations = int(max(1, min(1000, min_time_s / max(first, 1e-7))))
        # Every rank must run the same number of iterations: rank 0's choice.
        agreed = torch.tensor([iterations], dtype=torch.int64, device=target)
        dist.broadcast(agreed, 0)
        return int(agreed)

    def median_time(action) -> float:
        """The median over repeats of the slowest rank's time: a collective ends when the slowest rank does."""
        iterations = agreed_iterations(action)
        return statistics.median(max(timed(action, iterations)) for _ in range(repeats))

    try:
        record: dict = {"allreduce": []}
        for nbytes in sizes:
            tensor = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=target)
            record["allreduce"].append(median_time(lambda tensor=tensor: dist.all_reduce(tensor)))
        if parameter_bytes:
            record["ddp"] = _time_ddp(parameter_bytes, target, median_time)
        if load:
            record["contention"] = _time_contention(ComputeLoad(**load), target, processes, repeats, timed,
                                                    agreed_iterations)
        if rank == 0:  # atomically: the parent takes the file as the measurement
            with open(out + ".tmp", "w") as handle:
                json.dump(record, handle)
            os.replace(out + ".tmp", out)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _time_ddp(parameter_bytes: list[int], target, median_time) -> dict:
    """Seconds per backward of the stand-in module: without DDP, with DDP inside no_sync, and synchronized."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    plain = _stand_in(parameter_bytes, target)
    wrapped = DistributedDataParallel(_stand_in(parameter_bytes, target),
                                      device_ids=[target.index] if target.type == "cuda" else None)
    scale = torch.ones((), device=target)

    def step(module) -> None:
        module(scale).backward()

    def nosync() -> None:
        with wrapped.no_sync():
            step(wrapped)

    times = {"plain": median_time(lambda: step(plain)), "nosync": median_time(nosync),
             "sync": median_time(lambda: step(wrapped))}
    # Once more in the other order: a drift of the machine between the three would bias the differences.
    times["sync"] = (times["sync"] + median_time(lambda: step(wrapped))) / 2
    times["nosync"] = (times["nosync"] + median_time(nosync)) / 2
    times["plain"] = (times["plain"] + median_time(lambda: step(plain))) / 2
    return times


def _time_contention(load: ComputeLoad, target, processes: int, repeats: int, timed, agreed_iterations) -> dict:
    """Seconds per training step of `load` alone (each rank in turn) and all at once, alternating (Contention)."""
    import torch

    from scaling.models import build_model
    from scaling.task import TASKS

    torch.manual_seed(0)
    task = TASKS[load.task]
    model = build_model(load.model, tuple(load.input_shape), load.num_classes, task).to(target)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dtype = getattr(torch, load.input_dtype)
    shape = (load.batch, *load.input_shape)
    inputs = (torch.randn(shape, device=target).to(dtype) if dtype.is_floating_point
              else torch.zeros(shape, dtype=dtype, device=target))
    labels = task.synthetic_targets(load.batch, load.num_classes, target, tuple(load.input_shape))

    def step() -> None:
        task.loss(model(inputs), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    iterations = agreed_iterations(step)
    alone, together = [], []
    for repeat in range(repeats):
        turns: list[int | None] = [*range(processes), None]
        for turn in (turns if repeat % 2 == 0 else turns[::-1]):  # the machine's drift falls on both sides
            times = timed(step, iterations, alone=turn)
            if turn is None:
                together.append(max(times))
            else:
                alone.append(times[turn])
    return {"alone": statistics.median(alone), "together": statistics.median(together)}
