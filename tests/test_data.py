"""Noise matrices, protocols and the tf.data pipeline on small label arrays."""

import numpy as np
import pytest

from advisor_tf.data import noise, pipeline, protocols, sources


@pytest.mark.parametrize("kind,targets", [("flip", 1), ("flip2", 2),
                                          ("flip3", 3)])
def test_flip_matrices(kind, targets):
  t = noise.transition_matrix(kind, 0.6, 10, np.random.default_rng(0))
  np.testing.assert_allclose(t.sum(1), 1.0)
  np.testing.assert_allclose(np.diag(t), 0.4)
  for row in t:
    off = np.delete(row, np.argmax(row == 0.4))
    np.testing.assert_allclose(np.sort(off[off > 0]), [0.6 / targets] * targets)


def test_symmetric_and_similar():
  t = noise.transition_matrix("symmetric", 0.3, 4, np.random.default_rng(0))
  np.testing.assert_allclose(t, [[0.7 if i == j else 0.1 for j in range(4)]
                                 for i in range(4)])
  t = noise.transition_matrix("flip", 0.4, 10, np.random.default_rng(0),
                              rule="similar",
                              similar=noise.SIMILAR_CLASSES["cifar10"])
  assert t[3, 5] == pytest.approx(0.4) and t[9, 1] == pytest.approx(0.4)
  assert t[0, 0] == 1.0  # airplane is not in the table: never flipped.
  with pytest.raises(ValueError, match="--flip_targets=random"):
    noise.transition_matrix("flip", 0.4, 10, np.random.default_rng(0),
                            rule="similar", similar=None)


def test_corrupt_realised_rate_and_clean_labels():
  rng = np.random.default_rng(0)
  clean = np.repeat(np.arange(10), 500)
  t = noise.transition_matrix("flip", 0.4, 10, rng)
  noisy, kept = noise.corrupt(clean, t, rng)
  np.testing.assert_array_equal(kept, clean)
  assert abs(np.mean(noisy != clean) - 0.4) < 0.02
  # Every wrong label is its class's flip target.
  targets = np.argmax(t - np.eye(10) * t, axis=1)
  wrong = noisy != clean
  np.testing.assert_array_equal(noisy[wrong], targets[clean[wrong]])


def test_protocol_meta_split_long_tail_and_seed():
  labels = np.repeat(np.arange(5), 60)
  proto = protocols.Protocol(noise="flip", noise_rate=0.2,
                             imbalance_factor=10, meta_per_class=4)
  split = protocols.apply(proto, labels, 5, seed=3)
  assert not set(split.meta_indices) & set(split.train_indices)
  np.testing.assert_array_equal(np.bincount(split.meta_labels), [4] * 5)
  np.testing.assert_array_equal(labels[split.meta_indices], split.meta_labels)
  np.testing.assert_array_equal(labels[split.train_indices],
                                split.train_clean_labels)
  clean_counts = np.bincount(split.train_clean_labels, minlength=5)
  want = [int(56 * (0.1) ** (c / 4)) for c in range(5)]
  np.testing.assert_array_equal(clean_counts, want)
  again = protocols.apply(proto, labels, 5, seed=3)
  np.testing.assert_array_equal(again.train_indices, split.train_indices)
  np.testing.assert_array_equal(again.train_labels, split.train_labels)
  other = protocols.apply(proto, labels, 5, seed=4)
  assert not np.array_equal(other.meta_indices, split.meta_indices)


def test_protocol_errors_name_the_flag():
  with pytest.raises(ValueError, match="--meta_per_class"):
    protocols.apply(protocols.Protocol(meta_per_class=60),
                    np.repeat(np.arange(3), 60), 3, seed=0)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    noise.transition_matrix("flip", 1.0, 3, np.random.default_rng(0))


def test_digits_pipeline_zips_train_and_endless_meta():
  source = sources.load("digits")
  assert source.image_shape == (8, 8, 1)
  assert len(source.labels["train"]) == 1198
  assert len(source.labels["test"]) == 599
  split = protocols.apply(protocols.Protocol(noise="flip", noise_rate=0.4),
                          source.labels["train"], 10, seed=0)
  data = pipeline.train_and_meta(source, split, batch_size=64,
                                 meta_batch_size=50, seed=0)
  steps = len(split.train_indices) // 64
  batches = list(data.take(2 * steps).as_numpy_iterator())
  (x, y), (xm, ym) = batches[0]
  assert x.shape == (64, 8, 8, 1) and xm.shape == (50, 8, 8, 1)
  assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
  # One epoch = distinct training images with their (noisy) labels.
  images = source.images("train", split.train_indices)
  lookup = {arr.tobytes(): label for arr, label in
            zip(images.as_numpy_iterator(), split.train_labels)}
  epoch = np.concatenate([b[0][0] for b in batches[:steps]])
  labels = np.concatenate([b[0][1] for b in batches[:steps]])
  assert len({im.tobytes() for im in epoch}) == steps * 64
  assert [lookup[im.tobytes()] for im in epoch] == labels.tolist()
  # The next epoch is another order of the same images.
  second = np.concatenate([b[0][0] for b in batches[steps:]])
  assert not np.array_equal(epoch, second)
  # The meta stream outlives the 100-image meta set, each pass balanced.
  meta_seen = np.concatenate([b[1][1] for b in batches])
  assert len(meta_seen) > len(split.meta_indices)
  np.testing.assert_array_equal(np.bincount(meta_seen[:100], minlength=10),
                                [10] * 10)
  # Resuming at step s yields exactly the batches from s on.
  resumed = pipeline.train_and_meta(source, split, batch_size=64,
                                    meta_batch_size=50, seed=0,
                                    start_step=steps + 3)
  (rx, ry), (rxm, rym) = next(iter(resumed.as_numpy_iterator()))
  np.testing.assert_array_equal(rx, batches[steps + 3][0][0])
  np.testing.assert_array_equal(rym, batches[steps + 3][1][1])
  with pytest.raises(ValueError, match="--batch_size"):
    pipeline.train_and_meta(source, split, batch_size=10**6,
                            meta_batch_size=50, seed=0)


def _steps(stream, count):
  return list(stream.take(count).as_numpy_iterator())


@pytest.mark.slow
def test_batches_loaded_at_once_equal_those_loaded_file_by_file(
    tmp_path, monkeypatch):
  # Decoded in memory, a batch is one gather; read from the files, image by
  # image. Both give the same training stream, bit for bit, augmentation
  # included; a method that reads no meta batch (CE) repeats the first.
  from test_own_data import digits_folder
  folder = digits_folder(tmp_path / "data", per_split=(8, 3, 2))
  streams = {}
  for mib in ("0", "64"):
    monkeypatch.setenv("ADVISOR_TF_DECODED_CACHE_MIB", mib)
    source = sources.image_folder(folder, image_size=8)
    split = protocols.apply(protocols.Protocol(meta_per_class=2),
                            source.labels["train"], 3, seed=0)
    assert (source.batch_loader("train") is None) == (mib == "0")
    streams[mib] = _steps(pipeline.train_and_meta(
        source, split, batch_size=6, meta_batch_size=4, seed=3), 6)
  for a, b in zip(*streams.values()):
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x[0], y[0])
      np.testing.assert_array_equal(x[1], y[1])
  flips = [np.array_equal(s[0][0][:, :, ::-1], s[0][0]) for s in streams["0"]]
  assert not all(flips)  # Augmented, not merely loaded.
  metas = [s[1][1] for s in _steps(pipeline.train_and_meta(
      source, split, batch_size=6, meta_batch_size=4, seed=3,
      meta_stream=False), 3)]
  np.testing.assert_array_equal(metas[0], streams["64"][0][1][1])
  assert all(np.array_equal(m, metas[0]) for m in metas)


def test_cifar100_similar_targets_are_superclass_mates():
  table = noise.SIMILAR_CLASSES["cifar100"]
  assert len(noise.CIFAR100_CLASSES) == 100 == len(set(noise.CIFAR100_CLASSES))
  assert sorted(table) == list(range(100))
  names = noise.CIFAR100_CLASSES
  groups = [set(g.split()) for g in noise.CIFAR100_SUPERCLASSES]
  for c, targets in table.items():
    group = next(g for g in groups if names[c] in g)
    assert {names[t] for t in targets} == group - {names[c]}
  t = noise.transition_matrix("flip3", 0.6, 100, np.random.default_rng(0),
                              rule="similar", similar=table)
  apple = names.index("apple")
  assert {names[j] for j in np.flatnonzero(t[apple]) if j != apple} <= {
      "mushroom", "orange", "pear", "sweet_pepper"}
