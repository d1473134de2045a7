"""Each loader reads small files written here in the real on-disk formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import tensorflow as tf

from formats import jpeg, write_cifar, write_idx_dataset

from xnor_larq import data
from xnor_larq.data import cifar, imagenet, mnist

# --- idx (MNIST, Fashion-MNIST) ---------------------------------------------


@pytest.fixture
def idx_dir(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    return tmp_path, write_idx_dataset(tmp_path, rng)


def test_idx_loader_reads_the_files(idx_dir):
    directory, arrays = idx_dir
    (x, y), (xt, yt) = data.load_idx_dataset("mnist", data_dir=directory, download=False)
    np.testing.assert_array_equal(x, arrays["train"][0])
    np.testing.assert_array_equal(y, arrays["train"][1])
    np.testing.assert_array_equal(xt, arrays["test"][0])
    np.testing.assert_array_equal(yt, arrays["test"][1])


def test_idx_pipeline_scales_and_batches(idx_dir):
    directory, arrays = idx_dir
    spec = data.load_dataset("mnist", data_dir=directory, batch_size=4, download=False)
    assert spec.input_shape == (28, 28, 1) and spec.num_classes == 10 and spec.train_size == 12
    images, labels = next(iter(spec.test))
    np.testing.assert_allclose(images.numpy()[..., 0], arrays["test"][0][:4] / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(labels, arrays["test"][1][:4])
    assert sum(1 for _ in spec.train) == 3  # drop_remainder: 12 // 4


def test_corrupt_idx_file_is_named(idx_dir):
    directory, _ = idx_dir
    path = directory / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 5, 28, 28) + b"\0" * 100)
    with pytest.raises(data.CorruptDataError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        data.load_idx_dataset("mnist", data_dir=directory, download=False)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(data.CorruptDataError, match="t10k-images"):
        data.load_idx_dataset("mnist", data_dir=directory, download=False)


def test_missing_dataset_names_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load_idx_dataset("mnist", data_dir=empty, download=False)
    assert str(empty) in str(error.value)
    assert str(tmp_path / "keras-home" / "datasets" / "mnist") in str(error.value)
    assert "--data-dir" in str(error.value)
    assert "/usr/share/datasets/fashion-mnist" in "\n".join(
        str(p) for p in mnist.candidate_dirs("fashion_mnist")
    )
    with pytest.raises(data.DatasetNotFoundError, match="nowhere"):
        data.load_idx_dataset("mnist", data_dir=tmp_path / "nowhere", download=False)


# --- CIFAR ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_reads_pickled_batches(tmp_path, rng, name, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    folder, written = write_cifar(tmp_path, name, rng)
    (x, y), (xt, yt) = data.load_cifar(name, data_dir=tmp_path)  # parent folder works
    train_files = cifar._LAYOUT[name]["train"]
    assert x.shape == (6 * len(train_files), 32, 32, 3) and x.dtype == np.uint8
    first_pixels, first_labels = written[train_files[0]]
    # channel-plane layout: value of channel c at (r, col) is data[c*1024 + r*32 + col]
    for c, r, col in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert x[0, r, col, c] == first_pixels[0, c * 1024 + r * 32 + col]
    np.testing.assert_array_equal(y[:6], first_labels)
    np.testing.assert_array_equal(yt, written[cifar._LAYOUT[name]["test"][0]][1])
    (x2, _), _ = data.load_cifar(name, data_dir=folder)  # the batch folder itself too
    np.testing.assert_array_equal(x, x2)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/xnor_larq_pwned",))


def test_cifar_refuses_pickles_that_would_run_code(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    folder, _ = write_cifar(tmp_path, "cifar10", rng)
    bad = folder / "data_batch_3"
    with open(bad, "wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": []}, f, protocol=2)
    with pytest.raises(
        data.CorruptDataError, match="data_batch_3.*posix.system|data_batch_3.*os.system"
    ):
        data.load_cifar("cifar10", data_dir=folder)
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.array([object()], dtype=object), b"labels": []}, f)
    with pytest.raises(data.CorruptDataError, match="data_batch_3"):
        data.load_cifar("cifar10", data_dir=folder)
    bad.write_bytes(b"\x80\x02}q\x00")  # truncated pickle
    with pytest.raises(data.CorruptDataError, match="data_batch_3"):
        data.load_cifar("cifar10", data_dir=folder)


def test_cifar_missing_names_the_places(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py.*--data-dir"):
        data.load_cifar("cifar10", data_dir=tmp_path)


# --- ImageNet ---------------------------------------------------------------

COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 200, 30), "n01484850": (30, 30, 200)}


def expected_normalized(colour):
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    return (np.array(colour) - mean) / std


def test_image_folder_loader(tmp_path):
    for split in ("train", "val"):
        for wnid, colour in COLOURS.items():
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{wnid}_{i}.JPEG").write_bytes(jpeg(colour))
            (folder / "notes.txt").write_text("not an image")
    train, val, classes = imagenet.load_imagenet(tmp_path, image_size=32, batch_size=2, seed=1)
    assert classes == 3
    seen = 0
    for images, labels in val:
        assert images.shape[1:] == (32, 32, 3)
        for image, label in zip(images.numpy(), labels.numpy()):
            colour = list(COLOURS.values())[label]
            np.testing.assert_allclose(
                image.mean(axis=(0, 1)), expected_normalized(colour), atol=0.1
            )
            seen += 1
    assert seen == 6
    images, labels = next(iter(train))
    assert images.shape == (2, 32, 32, 3) and set(labels.numpy()) <= {0, 1, 2}


def test_tfrecord_loader_subtracts_the_label_offset(tmp_path):
    with tf.io.TFRecordWriter(str(tmp_path / "validation-00000-of-00001")) as writer:
        for label, colour in enumerate(COLOURS.values(), start=1):  # 1-based, as the format
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image/encoded": tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[jpeg(colour)])
                        ),
                        "image/class/label": tf.train.Feature(
                            int64_list=tf.train.Int64List(value=[label])
                        ),
                    }
                )
            )
            writer.write(example.SerializeToString())
    dataset = imagenet.tfrecord_dataset(
        tmp_path / "validation-*", training=False, image_size=24, batch_size=3
    )
    images, labels = next(iter(dataset))
    np.testing.assert_array_equal(labels, [0, 1, 2])
    for image, colour in zip(images.numpy(), COLOURS.values()):
        np.testing.assert_allclose(image.mean(axis=(0, 1)), expected_normalized(colour), atol=0.1)
    with pytest.raises(data.DatasetNotFoundError, match="train-"):
        imagenet.tfrecord_dataset(tmp_path / "train-*", training=True)


def test_imagenet_needs_a_data_dir(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="--data-dir"):
        imagenet.load_imagenet(None)
    with pytest.raises(data.DatasetNotFoundError, match="neither"):
        imagenet.load_imagenet(tmp_path)


# --- synthetic and dispatch -------------------------------------------------


def test_synthetic_and_bad_names():
    spec = data.load_dataset("synthetic", batch_size=32, seed=0)
    images, labels = next(iter(spec.train))
    assert images.shape == (32, 28, 28, 1) and labels.shape == (32,)
    assert float(tf.reduce_min(images)) >= -1 and float(tf.reduce_max(images)) <= 1
    with pytest.raises(ValueError, match="Choose one of"):
        data.load_dataset("cifar11")
    with pytest.raises(ValueError, match="batch-size"):
        data.load_dataset("synthetic", batch_size=10_000)
