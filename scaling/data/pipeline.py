"""The user's own input pipeline, judged apart from a run that trained from a copy of it in memory.

`--materialize auto` reads a map-style training set into memory once (scaling/data/delivery.py); the run then
trains from the copy, and its data wait is the copy's. The read is timed instead: its per-sample cost gives
the input ceiling of the user's own DataLoader, which is set against the compute ceiling the run measured
training from memory (result.json `pipeline`, docs/timing.md "Materialized datasets"). This module imports
nothing heavy: the summary line and the report use its wording.
"""

from __future__ import annotations

from typing import Any


def user_pipeline(read: dict[str, Any] | None, num_workers: int, processes: int, compute_rate: float | None,
                  compute_from: str | None, run_bound: str | None) -> dict[str, Any]:
    """`pipeline` in result.json: input- or compute-bound for the user's own loader of the training set.

    From a training set read into memory (`read`: {"read_s", "samples_read"}): the per-sample cost of the
    read, and the loader's input ceiling = processes x max(1, num_workers) / per-sample cost, assuming workers
    parallelise the reads perfectly and collation costs nothing (an upper bound, so an input-bound verdict
    holds a fortiori), against `compute_rate`. Without a read the run trained through the user's loader, and
    its own verdict (`run_bound`: "input" | "compute") is the loader's."""
    verdict = None if run_bound is None else f"{run_bound}-bound"
    block = {"materialized": read is not None, "read_s": None, "samples_read": None, "per_sample_s": None,
             "workers": None, "processes": None, "input_ceiling_samples_per_s": None,
             "compute_ceiling_samples_per_s": None, "compute_from": None, "verdict": verdict}
    if read is None:
        return block
    per_sample = read["read_s"] / read["samples_read"]
    workers = max(1, num_workers)
    ceiling = processes * workers / per_sample if per_sample > 0 else None
    if compute_rate is None:
        verdict = None
    else:
        verdict = "input-bound" if ceiling is not None and ceiling < compute_rate else "compute-bound"
    return {**block, "read_s": read["read_s"], "samples_read": read["samples_read"], "per_sample_s": per_sample,
            "workers": workers, "processes": processes, "input_ceiling_samples_per_s": ceiling,
            "compute_ceiling_samples_per_s": compute_rate, "compute_from": compute_from, "verdict": verdict}


def summary_text(pipeline: dict[str, Any], bottleneck: dict[str, Any] | None) -> str:
    """The summary line's verdict for a run whose training set was read into memory: what the run did, then
    what the user's loader would do: `, compute-bound as run (data wait 1%, training set read into memory in
    6.2 s); your loader: input-bound (2.0 ms/sample: input ceiling ~500 samples/s with 1 loader process
    against compute 40,000)`."""
    wait = bottleneck.get("data_wait_fraction") if bottleneck else None
    read = f"training set read into memory in {pipeline['read_s']:.1f} s"
    as_run = (f", {bottleneck['bound']}-bound as run (" + (f"data wait {wait:.0%}, " if wait is not None else "")
              + f"{read})") if bottleneck else f", {read}"
    if pipeline["verdict"] is None:
        return as_run
    return (f"{as_run}; your loader: {pipeline['verdict']} ({per_sample_text(pipeline['per_sample_s'])}/sample: "
            f"input ceiling ~{rate_text(pipeline['input_ceiling_samples_per_s'])} samples/s with "
            f"{loaders_text(pipeline)} against compute {rate_text(pipeline['compute_ceiling_samples_per_s'])})")


def loaders_text(pipeline: dict[str, Any]) -> str:
    """`1 loader process`, `4 loader processes per training process`."""
    workers, processes = pipeline["workers"], pipeline["processes"]
    text = f"{workers} loader process{'es' * (workers != 1)}"
    return text + (" per training process" if processes and processes > 1 else "")


def per_sample_text(seconds: float | None) -> str:
    """`2.0 ms`, `3.1 us`: a per-sample cost."""
    if seconds is None:
        return "n/a"
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} us"


def rate_text(value: float | None) -> str:
    """`500`, `40,000`: samples/s to two significant figures (a ceiling's precision), `n/a` when unknown."""
    if value is None:
        return "n/a"
    return f"{float(f'{value:.2g}'):,.0f}"
