import pytest
import torch

from scaling.batching import BatchPlan, GlobalBatchSampler, choose_per_device_bs, plan_batch
from scaling.config import ConfigError, RunConfig


def plan(world_size=1, **kw):
    return plan_batch(RunConfig(**kw), world_size)


def test_decomposition_from_per_device_size():
    p = plan(world_size=8, global_bs=4096, per_device_bs=128)
    assert (p.per_device_bs, p.num_processes, p.accumulation_steps) == (128, 8, 4)
    assert p.per_device_bs * p.num_processes * p.accumulation_steps == 4096


def test_decomposition_from_accumulation_steps():
    p = plan(world_size=2, global_bs=1024, accumulation_steps=4)
    assert (p.per_device_bs, p.num_processes, p.accumulation_steps) == (128, 2, 4)


def test_automatic_choice_is_largest_divisor_under_cap_preferring_multiples_of_8():
    assert choose_per_device_bs(4096, 512) == 512
    assert choose_per_device_bs(2000, 512) == 400  # 500 is the largest divisor; 400 is a multiple of 8
    assert choose_per_device_bs(1000, 512) == 500  # the best multiple of 8 (200) is under half of 500
    assert choose_per_device_bs(960, 512) == 480
    assert choose_per_device_bs(129, 512) == 129
    p = plan(global_bs=4096, max_per_device_bs=512)
    assert (p.per_device_bs, p.accumulation_steps) == (512, 8)


def test_indivisible_per_device_size_names_every_factor_and_suggests_sizes():
    with pytest.raises(ConfigError) as err:
        plan(world_size=2, global_bs=1000, per_device_bs=64)
    message = str(err.value)
    assert "1000" in message and "64" in message and "2 process" in message
    assert "896 or 1024" in message  # multiples of 64 x 2 around 1000


def test_indivisible_accumulation_is_refused():
    with pytest.raises(ConfigError, match="3 accumulation steps"):
        plan(global_bs=256, accumulation_steps=3)


def test_global_batch_not_divisible_by_processes():
    with pytest.raises(ConfigError, match="not divisible by 4 processes.*100 or 104"):
        plan(world_size=4, global_bs=102)


def test_emulation_must_be_a_multiple_of_world_size():
    with pytest.raises(ConfigError, match="multiple of the real world size 2"):
        plan(world_size=2, global_bs=96, emulate_processes=3)


def test_emulated_plan_runs_all_logical_ranks_on_one_process():
    p = plan(world_size=1, global_bs=4096, per_device_bs=512, emulate_processes=8)
    assert (p.num_processes, p.world_size, p.accumulation_steps, p.micro_steps_per_process) == (8, 1, 1, 8)
    assert p.emulated and "emulated on 1 real process" in p.describe()


def _samples_per_step(plan: BatchPlan, steps: int, size: int = 1000, seed: int = 3):
    sampler = GlobalBatchSampler(size, plan, seed)
    per_step = []
    for step in range(steps):
        chunks = [c for rank in range(plan.world_size) for c in sampler.micro_batches(step, rank)]
        assert all(len(c) == plan.per_device_bs for c in chunks)
        per_step.append(torch.cat(chunks))
    return per_step


@pytest.mark.parametrize("decomposition", [(1, 64, 1), (1, 8, 8), (2, 32, 1), (2, 8, 4), (4, 16, 1)])
def test_every_decomposition_sees_the_same_samples_in_the_same_order(decomposition):
    world, per_device, accumulation = decomposition
    reference = _samples_per_step(BatchPlan(64, 64, 1, 1, 1), steps=40)
    other = _samples_per_step(BatchPlan(64, per_device, world, accumulation, world), steps=40)
    for ref, got in zip(reference, other, strict=True):
        assert torch.equal(ref, got)


def test_epochs_draw_new_permutations_and_drop_the_incomplete_batch():
    sampler = GlobalBatchSampler(100, BatchPlan(32, 32, 1, 1, 1), seed=0)
    assert sampler.steps_per_epoch == 3  # 4 samples of each epoch are dropped
    epoch0 = torch.cat([sampler.global_batch(s) for s in range(3)])
    epoch1 = torch.cat([sampler.global_batch(s) for s in range(3, 6)])
    assert len(set(epoch0.tolist())) == 96 and not torch.equal(epoch0, epoch1)


def test_training_set_smaller_than_global_batch_is_refused():
    with pytest.raises(ConfigError, match="larger than the training set"):
        GlobalBatchSampler(100, BatchPlan(128, 128, 1, 1, 1), seed=0)


class _Items(torch.utils.data.Dataset):
    """A map-style dataset of (tensor, int) items that counts how it is read."""

    def __init__(self, size: int):
        self.inputs = torch.arange(size * 3, dtype=torch.float32).view(size, 3)
        self.item_calls = 0

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        self.item_calls += 1
        return self.inputs[index], index % 3


class _BatchedItems(_Items):
    """The same items, with the batched-fetch protocol (`datasets.Dataset` has it too)."""

    def __init__(self, size: int):
        super().__init__(size)
        self.batch_calls: list[list[int]] = []

    def __getitems__(self, indices: list[int]):
        self.batch_calls.append(list(indices))
        return [(self.inputs[i], i % 3) for i in indices]


def test_a_dataset_with_getitems_is_fetched_one_call_per_batch():
    from scaling.data.delivery import BatchSource, fetch_batch

    plain, batched = _Items(40), _BatchedItems(40)
    indices = torch.tensor([5, 1, 7, 30])
    inputs, labels = fetch_batch(batched, indices)
    assert batched.batch_calls == [[5, 1, 7, 30]] and batched.item_calls == 0
    expected = fetch_batch(plain, indices)
    assert plain.item_calls == 4
    assert torch.equal(inputs, expected[0]) and torch.equal(labels, expected[1])
    assert labels.tolist() == [2, 1, 1, 0]
    # The DataLoader path (one process, 2 micro-batches of 4 per step): one call per micro-batch, the
    # sampler's indices in order, and the batches the item-by-item path gives.
    cfg = RunConfig(global_bs=8, per_device_bs=4)
    plan = plan_batch(cfg, 1)
    sampler = GlobalBatchSampler(len(batched), plan, seed=0)
    sources = {name: BatchSource(data, sampler, 0, torch.device("cpu"), cfg)
               for name, data in (("plain", plain), ("batched", batched))}
    batched.batch_calls.clear()
    for source in sources.values():
        source.start(first_step=3)
    for step in (3, 4):
        got = list(sources["batched"].micro_batches(step))
        want = list(sources["plain"].micro_batches(step))
        assert [b[0].tolist() for b in got] == [b[0].tolist() for b in want]
        assert [b[1].tolist() for b in got] == [b[1].tolist() for b in want]
    assert batched.batch_calls == [ix.tolist() for step in (3, 4) for ix in sampler.micro_batches(step, 0)]
    assert batched.item_calls == 0


@pytest.mark.parametrize("shape", [(50, 40), (50, 1, 40), (50, 3, 8, 8)])
def test_whole_batch_gather_equals_indexing_and_keeps_a_channels_last_layout(shape):
    """TensorPair.batch gathers with index_select (faster on the CPU): the same values and label dtype as
    advanced indexing, and channels-last images stay channels-last (what --channels-last relies on)."""
    from scaling.data.tensors import TensorPair

    inputs, labels = torch.randn(*shape), torch.randint(0, 10, (50,), dtype=torch.int32)
    indices = torch.randperm(50)[:17]
    layouts = [inputs] + ([inputs.contiguous(memory_format=torch.channels_last)] if len(shape) == 4 else [])
    for layout in layouts:
        got_inputs, got_labels = TensorPair(layout, labels).batch(indices)
        assert torch.equal(got_inputs, inputs[indices])
        assert torch.equal(got_labels, labels[indices].long()) and got_labels.dtype == torch.int64
        assert got_inputs.is_contiguous(memory_format=torch.channels_last) == (layout is not inputs)
