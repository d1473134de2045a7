"""xnor_larq.data.pipeline: whole-epoch shuffles, layouts, resume points, padding."""

import numpy as np
import pytest
import tensorflow as tf
from formats import write_image_folder, write_tfrecords

from xnor_larq import data
from xnor_larq.data import imagenet, pipeline


def labels_of(dataset):
    return [batch[1].numpy() for batch in dataset]


@pytest.fixture
def arrays(rng):
    images = rng.integers(0, 256, size=(50, 6, 6, 1), dtype=np.uint8)
    # each image's first pixel holds its index: batches can be traced back
    images[:, 0, 0, 0] = np.arange(50)
    return images, rng.integers(0, 10, size=50)


def indices_of(batch):
    return np.round((batch[0].numpy()[:, 0, 0, 0] + 1) * 127.5).astype(int).tolist()


def test_every_epoch_is_a_new_permutation_of_the_whole_set(arrays):
    source = pipeline.ArraySource(*arrays)
    dataset = pipeline.training_dataset(source, global_batch=10, steps_per_epoch=5, epochs=3)
    batches = [indices_of(b) for b in dataset]
    epochs = [sum(batches[e * 5 : (e + 1) * 5], []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(50))
    assert epochs[0] != epochs[1] != epochs[2]
    again = [indices_of(b) for b in pipeline.training_dataset(
        source, global_batch=10, steps_per_epoch=5, epochs=3)]
    assert again == batches
    other = [indices_of(b) for b in pipeline.training_dataset(
        source, global_batch=10, steps_per_epoch=5, epochs=3, seed=1)]
    assert other != batches


@pytest.mark.parametrize("pipelines,replicas_each", [(1, 2), (2, 1), (2, 2)])
def test_global_batches_do_not_depend_on_the_layout(arrays, pipelines, replicas_each):
    source = pipeline.ArraySource(*arrays, augment="shift")
    single = list(pipeline.training_dataset(source, global_batch=8, steps_per_epoch=6, epochs=2))
    streams = [
        list(
            pipeline.training_dataset(
                source,
                global_batch=8,
                steps_per_epoch=6,
                epochs=2,
                layout=pipeline.InputLayout(pipelines, p, replicas_each),
            )
        )
        for p in range(pipelines)
    ]
    for step, whole in enumerate(single):
        # replicas of a pipeline take consecutive per-replica batches
        parts = [
            streams[p][step * replicas_each + r]
            for p in range(pipelines)
            for r in range(replicas_each)
        ]
        np.testing.assert_array_equal(np.concatenate([x[0] for x in parts]), whole[0])
        np.testing.assert_array_equal(np.concatenate([x[1] for x in parts]), whole[1])


def test_a_resume_point_continues_the_stream_exactly(arrays):
    source = pipeline.ArraySource(*arrays, augment="shift")
    full = list(pipeline.training_dataset(source, global_batch=10, steps_per_epoch=5, epochs=2))
    for first_step in (3, 5, 7):
        tail = list(
            pipeline.training_dataset(
                source, global_batch=10, steps_per_epoch=5, epochs=2, first_step=first_step
            )
        )
        assert len(tail) == 10 - first_step
        for a, b in zip(tail, full[first_step:]):
            np.testing.assert_array_equal(a[0], b[0])


def test_augmentation_is_stateless_and_differs_per_epoch(arrays):
    images, labels = arrays
    source = pipeline.ArraySource(images, labels, augment="crop_flip")
    def run():
        return np.concatenate([b[0].numpy() for b in pipeline.training_dataset(
            source, global_batch=10, steps_per_epoch=5, epochs=2, uint8=True)])
    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.uint8


def test_evaluation_pads_to_whole_global_batches_with_weight_zero(arrays):
    source = pipeline.ArraySource(*arrays)
    layouts = [pipeline.InputLayout(2, p, 2) for p in range(2)]
    streams = [list(pipeline.evaluation_dataset(source, global_batch=16, layout=layout))
               for layout in layouts]
    assert len(streams[0]) == len(streams[1]) == 2 * pipeline.evaluation_steps(50, 16)
    labels = np.concatenate([b[1] for s in streams for b in s])
    weights = np.concatenate([b[2] for s in streams for b in s])
    assert weights.sum() == 50 and len(weights) == 64
    real = np.concatenate([b[0].numpy()[b[2].numpy() > 0] for s in streams for b in s])
    seen = np.round((real[:, 0, 0, 0] + 1) * 127.5).astype(int)
    assert sorted(seen.tolist()) == list(range(50))
    assert labels.shape == (64,)


def test_image_folder_batches_are_as_mixed_as_random_draws(tmp_path, rng):
    # The old pipeline listed paths class by class and shuffled through a buffer,
    # so at ImageNet scale a batch held a fraction of the classes of a random draw.
    classes, per_class, batch = 20, 24, 32
    train_count, _ = write_image_folder(tmp_path, rng, classes=classes, per_class=per_class,
                                        val_per_class=1, size=(8, 8))
    paths, labels, _ = imagenet.list_image_folder(tmp_path / "train")
    assert labels == sorted(labels)  # listed class by class
    source = imagenet.folder_source(paths, labels, image_size=8)
    steps = train_count // batch
    dataset = pipeline.training_dataset(source, global_batch=batch, steps_per_epoch=steps,
                                        epochs=2, uint8=True)
    distinct = [len(set(b[1].numpy())) for b in dataset]
    # a random batch of 32 from 20 equal classes holds 20·(1 − (1 − 1/20)^32) ≈ 16.1 classes
    # (sampling without replacement: a little more); bound: 90% of that on average
    random_draw = classes * (1 - (1 - 1 / classes) ** batch)
    assert np.mean(distinct) >= 0.9 * random_draw, (np.mean(distinct), random_draw)


def test_tfrecord_counts_are_read_from_the_framing_and_cached(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_tfrecords(tmp_path / "data", rng, "train", shards=3, per_shard=7)
    files = sorted(str(p) for p in (tmp_path / "data").glob("train-*"))
    assert imagenet.shard_counts(files) == [7, 7, 7]
    assert list((tmp_path / "cache" / "xnor_larq").glob("tfrecord-counts-*.json"))
    monkeypatch.setattr(imagenet, "count_records", lambda path: pytest.fail("recounted"))
    assert imagenet.shard_counts(files) == [7, 7, 7]
    truncated = tmp_path / "data" / "train-00000-of-00003"
    truncated.write_bytes(truncated.read_bytes()[:-10])
    monkeypatch.undo()
    with pytest.raises(data.CorruptDataError, match="train-00000-of-00003.*truncated"):
        imagenet.count_records(truncated)


@pytest.mark.parametrize("shards", [1, 4])
def test_tfrecord_pipelines_split_the_records_and_resume_exactly(tmp_path, rng, shards,
                                                                 monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_tfrecords(tmp_path, rng, "train", shards=shards, per_shard=32 // shards)
    source = imagenet.TFRecordShards(tmp_path / "train-*", image_size=8)
    assert source.size == 32
    common = dict(global_batch=8, steps_per_epoch=4, epochs=2, uint8=True, shuffle_buffer=8)
    full = list(source.training_dataset(**common))
    assert len(full) == 8
    tail = list(source.training_dataset(first_step=5, **common))
    for a, b in zip(tail, full[5:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    # two pipelines: each reads half of every epoch's records, none twice
    halves = [list(source.training_dataset(layout=pipeline.InputLayout(2, p, 1), **common))
              for p in range(2)]
    assert all(len(h) == 8 for h in halves)
    per_epoch = [
        np.concatenate([b[0].numpy().reshape(4, -1) for h in halves for b in h[e * 4 : e * 4 + 4]])
        for e in range(2)
    ]
    for images in per_epoch:
        assert len(images) == 32 and len({row.tobytes() for row in images}) == 32


def test_crop_window_decode_matches_a_full_decode(tmp_path, rng):
    encoded = tf.constant(
        tf.io.encode_jpeg(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)).numpy()
    )
    seed = tf.constant([3, 4], tf.int64)
    for training in (True, False):
        window = imagenet.prepare_image(encoded, training=training, image_size=16, seed=seed)
        full = imagenet.prepare_image(encoded, training=training, image_size=16, seed=seed,
                                      full_decode=True)
        assert window.dtype == tf.uint8 and window.shape == (16, 16, 3)
        # libjpeg's cropped decode may round a few levels differently
        assert np.abs(window.numpy().astype(int) - full.numpy().astype(int)).mean() < 3
    png = tf.io.encode_png(rng.integers(0, 256, size=(30, 30, 3), dtype=np.uint8))
    assert imagenet.prepare_image(png, training=True, image_size=16, seed=seed).shape == (16, 16, 3)


def test_imagenet_options_are_honoured_or_refused_by_name(tmp_path, rng):
    write_image_folder(tmp_path, rng, classes=4, per_class=5, val_per_class=1, size=(8, 8))
    subset = data.load_dataset("imagenet", data_dir=tmp_path, train_subset=12, image_size=8,
                               batch_size=4)
    assert subset.train_size == 12 and len(set(subset.train_source.labels)) > 1
    plain = data.load_dataset("imagenet", data_dir=tmp_path, augment="none", image_size=8,
                              batch_size=4)
    first = [b[0].numpy() for b in pipeline.training_dataset(
        plain.train_source, global_batch=4, steps_per_epoch=5, epochs=1, uint8=True)]
    again = [b[0].numpy() for b in pipeline.training_dataset(
        plain.train_source, global_batch=4, steps_per_epoch=5, epochs=1, seed=9, uint8=True)]
    # no augmentation: the same images (in another order) whatever the seed
    assert sorted(x.tobytes() for b in first for x in b) == sorted(
        x.tobytes() for b in again for x in b)
    with pytest.raises(ValueError, match="--augment 'shift' is not an ImageNet augmentation"):
        data.load_dataset("imagenet", data_dir=tmp_path, augment="shift")
    with pytest.raises(ValueError, match="--augment inception is ImageNet's"):
        data.load_dataset("synthetic", augment="inception")
    with pytest.raises(ValueError, match="--train-size is for TFRecord shards"):
        data.load_dataset("imagenet", data_dir=tmp_path, train_size=10)
