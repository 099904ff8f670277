"""The image-decoding input pipeline: encoded Arrow storage, per-sample decode + augmentation, cache, model."""

from __future__ import annotations

import pickle
import time

import pytest
import torch

from scaling.data import images
from scaling.models import SmallCNN2D, has_batch_coupled_layers

NUM_SAMPLES = 600  # 480 train, 120 eval
SIZE = 32


@pytest.fixture(scope="module")
def splits():
    # The session cache (conftest) is private, so this builds the cache once for the whole module.
    return images.load_image_dataset(NUM_SAMPLES)


def _raw_split(name: str):
    import datasets

    return datasets.load_from_disk(str(images.image_cache_dir(NUM_SAMPLES)))[name]


def test_arrow_column_holds_encoded_png(splits):
    import datasets

    split = _raw_split("train")
    assert isinstance(split.features["image"], datasets.Image)
    assert set(split.column_names) == {"image", "label"}
    raw = split.cast_column("image", datasets.Image(decode=False))
    data = raw[0]["image"]["bytes"]
    assert data[:4] == b"\x89PNG"
    assert len(data) < SIZE * SIZE  # compressed, not raw pixels
    assert len(split) + len(_raw_split("test")) == NUM_SAMPLES


def test_jpeg_format_is_optional():
    import datasets

    built = images.build_image_dataset(NUM_SAMPLES, image_size=16, fmt="jpeg")
    raw = built["test"].cast_column("image", datasets.Image(decode=False))
    assert raw[0]["image"]["bytes"][:3] == b"\xff\xd8\xff"
    with pytest.raises(ValueError, match="image format"):
        images.build_image_dataset(NUM_SAMPLES, fmt="GIF")


def test_items_are_normalized_float_images_with_int_labels(splits):
    for dataset in splits:
        x, y = dataset[3]
        assert x.dtype == torch.float32 and x.shape == (1, SIZE, SIZE)
        assert isinstance(y, int) and 0 <= y < 10
    eval_ = splits[1]
    batch = torch.stack([eval_[i][0] for i in range(64)])
    assert abs(batch.mean().item()) < 0.3 and 0.7 < batch.std().item() < 1.3  # roughly standardized
    assert eval_.mean == splits[0].mean  # eval uses the train statistics
    assert eval_[5][1] == _raw_split("test")[5]["label"]
    assert splits[0].num_classes == 10


def test_train_reads_are_augmented_and_eval_reads_are_not(splits):
    train, eval_ = splits
    reads = [train[7][0] for _ in range(6)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])
    assert torch.equal(eval_[7][0], eval_[7][0])


def test_cache_is_reused_without_regenerating(splits, monkeypatch):
    folder = images.image_cache_dir(NUM_SAMPLES)
    stamp = folder.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the cache was regenerated")

    monkeypatch.setattr(images, "build_image_dataset", fail)
    train, _ = images.load_image_dataset(NUM_SAMPLES)
    assert len(train) == len(splits[0])
    assert folder.stat().st_mtime_ns == stamp
    assert not list(folder.parent.glob(folder.name + ".tmp*"))  # the temporary build folder was renamed
    # A different image size is a different cache entry.
    assert images.image_cache_dir(NUM_SAMPLES, image_size=16) != folder


def test_other_image_sizes_feed_the_model():
    train, _ = images.load_image_dataset(NUM_SAMPLES, image_size=20, pad=2)
    x, _ = train[0]
    assert x.shape == (1, 20, 20)
    assert SmallCNN2D()(x.unsqueeze(0)).shape == (1, 10)


def test_pickles_and_iterates_with_two_workers(splits):
    train, eval_ = splits
    copy = pickle.loads(pickle.dumps(eval_))
    assert torch.equal(copy[11][0], eval_[11][0])
    # Two batches that both repeat index 0 go to the two workers: distinct worker seeds must give
    # distinct augmentations, and items within a batch vary too.
    loader = torch.utils.data.DataLoader(train, batch_sampler=[[0] * 8, [0] * 8, [1, 2, 3, 4]], num_workers=2)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(8, 1, SIZE, SIZE)] * 2 + [(4, 1, SIZE, SIZE)]
    assert batches[0][1].dtype == torch.int64
    assert not torch.equal(batches[0][0], batches[1][0])
    assert len({tuple(x.flatten().tolist()) for x in batches[0][0]}) > 1


def test_decoding_throughput_is_measured(splits):
    train = splits[0]
    indices = torch.randint(len(train), (17, 64), generator=torch.Generator().manual_seed(0))
    for workers in (0, 2):
        batches = indices.tolist()
        loader = torch.utils.data.DataLoader(train, batch_sampler=batches, num_workers=workers)
        iterator = iter(loader)
        next(iterator)  # not timed: worker start-up
        start = time.perf_counter()
        count = sum(len(labels) for _, labels in iterator)
        rate = count / (time.perf_counter() - start)
        print(f"\ndecode + augment, batch 64, num_workers={workers}: {rate:,.0f} samples/s")
        assert count == 64 * 16


@pytest.mark.slow
def test_small_cnn_learns_the_decoded_images(splits):
    train, eval_ = splits
    torch.manual_seed(0)
    model = SmallCNN2D()
    assert 20_000 <= sum(p.numel() for p in model.parameters()) <= 60_000
    assert not has_batch_coupled_layers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, drop_last=True)
    steps = 0
    while steps < 150:
        for inputs, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == 150:
                break
    items = [eval_[i] for i in range(len(eval_))]
    inputs, labels = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    print(f"\nSmallCNN2D eval accuracy after 150 steps: {accuracy:.2f}")
    assert accuracy > 0.3  # chance is 0.1
