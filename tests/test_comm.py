"""The communication model (scaling/devices/comm.py) against hand-computed values, DDP's own buckets, and real
all-reduces between local gloo processes."""

import math

import pytest
import torch
import torch.multiprocessing as mp

from scaling.config import ConfigError
from scaling.devices import comm, measure
from scaling.devices.comm import Interconnect, allreduce_time, ddp_buckets, exposed_allreduce, fit_alpha_beta

MIB = 2**20


def link(bandwidth: float, latency: float = 0.0, overlap: bool = True) -> Interconnect:
    return Interconnect("test", bandwidth, latency, "given", overlap=overlap)


def test_allreduce_time_is_latency_plus_ring_volume_over_bus_bandwidth():
    fast = link(1e9, 10e-6)
    assert allreduce_time(1e6, 1, fast) == 0.0  # nothing to synchronize on one process
    # N = 2: 2(N-1)/N = 1, so 10 us + 1 MB / 1 GB/s = 1.010 ms
    assert allreduce_time(1e6, 2, fast) == pytest.approx(1.010e-3)
    # N = 4: 2 * 3/4 = 1.5 -> 10 us + 1.5 ms
    assert allreduce_time(1e6, 4, fast) == pytest.approx(1.510e-3)
    # N = 64: 2 * 63/64 = 1.96875
    assert allreduce_time(1e6, 64, fast) == pytest.approx(10e-6 + 1.96875e-3)


def test_buckets_close_when_they_reach_their_cap():
    # Gradients in backward order: head bias, head weight, hidden bias, hidden weight (4 MiB), first layer.
    sizes = [40, 40_960, 4_096, 4 * MIB, 4_096, 163_840]
    # The first bucket closes at >= 1 MiB (once the 4 MiB weight is in), the rest fit in the 25 MiB cap.
    assert ddp_buckets(sizes) == [40 + 40_960 + 4_096 + 4 * MIB, 4_096 + 163_840]
    # Small models: one bucket.
    assert ddp_buckets([1000, 2000, 3000]) == [6000]
    # Later buckets at the 25 MiB cap (first at 1 MiB), each closing on the tensor that reaches its cap.
    assert ddp_buckets([MIB] * 60) == [MIB, 25 * MIB, 25 * MIB, 9 * MIB]
    assert ddp_buckets([MIB] * 6, bucket_cap_mb=2, first_bucket_bytes=2 * MIB) == [2 * MIB] * 3


def test_exposed_allreduce_overlaps_all_but_the_tail_with_backward():
    # N = 2 and latency 0: an all-reduce of b bytes takes b / 1000 seconds.
    slow = link(1000.0)
    # Buckets of 1000 and 3000 bytes (1 s and 3 s). Backward 10 s: bucket 1 is ready at 2.5 s, done at 3.5 s;
    # bucket 2 is ready when backward ends (10 s) and takes 3 s: exposed 3 s, the last bucket.
    estimate = exposed_allreduce([1000, 3000], 2, slow, backward_s=10.0)
    assert estimate.bucket_s == pytest.approx([1.0, 3.0])
    assert estimate.total_s == pytest.approx(4.0)
    assert estimate.exposed_s == pytest.approx(3.0)
    # 3000 then 1000 bytes, backward 10 s: bucket 1 ready at 7.5, done at 10.5; bucket 2 waits for it,
    # done at 11.5: exposed 1.5 s (more than the last bucket's 1 s: the queue spills past backward).
    assert exposed_allreduce([3000, 1000], 2, slow, 10.0).exposed_s == pytest.approx(1.5)
    # Backward 2 s: bucket 1 ready at 1.5, done at 4.5; bucket 2 done at 5.5: exposed 3.5 s.
    assert exposed_allreduce([3000, 1000], 2, slow, 2.0).exposed_s == pytest.approx(3.5)
    # One bucket is ready only when backward ends: all of it is exposed.
    assert exposed_allreduce([4000], 2, slow, 100.0).exposed_s == pytest.approx(4.0)
    # Without overlap, the whole sum; on one process, nothing.
    assert exposed_allreduce([3000, 1000], 2, link(1000.0, overlap=False), 10.0).exposed_s == pytest.approx(4.0)
    assert exposed_allreduce([3000, 1000], 1, slow, 10.0).exposed_s == 0.0
    # A measured total (DDP's own synchronization, 8 s) is shared in the model's proportions, 6 s and 2 s:
    # bucket 1 ready at 7.5, done at 13.5; bucket 2 done at 15.5: exposed 5.5 s.
    measured = exposed_allreduce([3000, 1000], 2, slow, 10.0, measured_total_s=8.0)
    assert measured.bucket_s == pytest.approx([6.0, 2.0]) and measured.exposed_s == pytest.approx(5.5)


def test_fit_recovers_latency_and_bandwidth():
    sizes = [4, 1024, 65_536, MIB, 16 * MIB]
    for processes in (2, 4):
        times = [50e-6 + 2 * (processes - 1) / processes * s / 2e9 for s in sizes]
        fit = fit_alpha_beta(sizes, times, processes)
        assert fit.latency == pytest.approx(50e-6, rel=1e-6)
        assert fit.bus_bandwidth == pytest.approx(2e9, rel=1e-6)
        assert fit.max_relative_residual < 1e-9
    # Noise of +-10% does not move either far (relative residuals: the small sizes decide the latency).
    noisy = [t * f for t, f in zip([50e-6 + s / 2e9 for s in sizes], [1.1, 0.9, 1.05, 0.95, 1.1], strict=True)]
    fit = fit_alpha_beta(sizes, noisy, 2)
    assert 40e-6 < fit.latency < 60e-6 and 1.6e9 < fit.bus_bandwidth < 2.4e9
    with pytest.raises(ValueError):
        fit_alpha_beta([4, 8], [1e-3, 0.5e-3], 2)  # time falls with size: no bandwidth


def test_presets_and_given_figures():
    nvlink = comm.preset("NVLink4")
    assert nvlink.bus_bandwidth == 450e9 and nvlink.source == "preset"
    assert comm.preset("ib-ndr").bus_bandwidth == 50e9  # 400 Gb/s
    assert comm.preset("ethernet-10g").bus_bandwidth == 1.25e9
    assert comm.preset("pcie4").bus_bandwidth < comm.preset("pcie5").bus_bandwidth < nvlink.bus_bandwidth
    with pytest.raises(ConfigError, match="nvlink4"):
        comm.preset("nvlink9")
    given = comm.given(25.0, 5.0)
    assert given.bus_bandwidth == 25e9 and given.latency == pytest.approx(5e-6)
    for bandwidth, latency in ((0.0, 1.0), (-1.0, 1.0), (1.0, -1.0), (math.inf, 1.0)):
        with pytest.raises(ConfigError):
            comm.given(bandwidth, latency)


def test_measurement_sizes_cover_both_ends_and_the_buckets():
    sizes = measure.measurement_sizes([4_239_400, 167_936])
    assert sizes[0] == 4 and 4_239_400 in sizes and 167_936 in sizes
    assert all(size % 4 == 0 for size in sizes) and sizes == sorted(set(sizes))


# ---- real processes ----


def _ddp_buckets(rank: int, port: int, out: dict) -> None:
    import os

    import torch.distributed as dist

    from scaling.models import MLP, ResNetCIFAR

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for name, model, x in (("mlp", MLP(40, hidden=1024), torch.randn(4, 40)),
                               ("resnet", ResNetCIFAR(3, width=16), torch.randn(2, 3, 16, 16))):
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            for _ in range(3):  # DDP rebuilds its buckets in the real gradient order after the first iteration
                ddp(x).sum().backward()
            if rank == 0:
                rebuilt = ddp._get_ddp_logging_data()["rebuilt_bucket_sizes"]
                out[name] = ([int(s) for s in str(rebuilt).split(",")], ddp_buckets(comm.model_gradient_bytes(model)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_buckets_match_the_ones_ddp_builds():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_buckets, args=(measure._free_port(), out), nprocs=2)
    assert set(out.keys()) == {"mlp", "resnet"}
    for name, (real, modelled) in out.items():
        assert modelled == real, name
    assert len(out["mlp"][1]) == 2  # the test covers more than one bucket


@pytest.mark.slow
def test_measured_allreduce_grows_with_size_and_fits():
    layout = [4 * MIB, 4096, 40_960]  # registration order: a 1 M-parameter layer, its bias, a head
    load = comm.ComputeLoad("mlp", (40,), "float32", 10, 32)
    measurement = measure.measure_allreduce(2, [4, 4096, MIB, 8 * MIB], min_time_s=0.05, repeats=3,
                                         parameter_bytes=layout, compute=load)
    # The model's training step, alone and both at once: the real thing, so only its shape is asserted
    # (on 2 cores the two processes may or may not slow each other down).
    contention = measurement.contention
    assert contention.processes == 2 and contention.batch == 32
    assert contention.alone_s > 0 and contention.together_s > 0 and contention.factor >= 1.0
    assert measurement.to_dict()["contention"]["measured_factor"] == pytest.approx(contention.measured_factor)
    ddp = measurement.ddp
    assert ddp.processes == 2 and ddp.parameter_bytes == tuple(layout)
    # DDP's synchronization of 4.2 MB takes longer than the bare all-reduce of 4 KiB. (Not 1 MiB: a difference
    # of two medians, measured at another moment than the all-reduces, moves with the load on 2 cores.)
    assert ddp.sync_s > measurement.seconds[1] > 0 and ddp.micro_overhead_s >= 0
    assert measurement.backend == "gloo" and len(measurement.seconds) == 4
    assert all(t > 0 for t in measurement.seconds)
    assert measurement.seconds[-1] > measurement.seconds[0]
    link_ = measurement.interconnect()
    assert link_.source == "measured"
    # Loose bounds: local gloo moves between 10 MB/s and 1 TB/s, with a latency under 100 ms.
    assert 1e7 < link_.bus_bandwidth < 1e12
    assert 0 <= link_.latency < 0.1


def test_a_measured_cpu_link_overlaps_only_with_a_core_to_spare(monkeypatch):
    fit = comm.AlphaBetaFit(1e-4, 1e9, 0.0)
    monkeypatch.setattr(comm.os, "cpu_count", lambda: 2)
    busy = comm.CommMeasurement(2, "gloo", "cpu", [4], [1e-4], fit=fit, threads=1)
    assert not busy.interconnect().overlap  # 2 processes x 1 thread on 2 cores: gloo shares their cores
    monkeypatch.setattr(comm.os, "cpu_count", lambda: 16)
    assert busy.interconnect().overlap
    assert not comm.CommMeasurement(2, "gloo", "cpu", [4], [1e-4], fit=fit, threads=8).interconnect().overlap
    monkeypatch.setattr(comm.os, "cpu_count", lambda: 2)
    assert comm.CommMeasurement(2, "nccl", "cuda", [4], [1e-4], fit=fit).interconnect().overlap
