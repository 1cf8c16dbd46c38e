import os

import jax
import numpy as np
import pytest
from PIL import Image

from simjax.tasks.cifar10 import input_pipeline
from simjax.tasks.cifar10.input_pipeline import Augmentation, DataError


def test_split_loads_decoded_with_provenance_and_is_cached(cifar_data_dir, tmp_path, monkeypatch):
  split = input_pipeline.load_split("train[:64]", cifar_data_dir, str(tmp_path))
  assert split.images.shape == (64, 32, 32, 3) and split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32 and set(split.labels) <= set(range(10))
  assert split.class_names == input_pipeline.CLASS_NAMES
  assert split.info["version"] == "3.0.2" and split.info["rows"] == 64
  assert split.info["label"] in ("CIFAR-10", "CIFAR-10 (JPEG stand-in)")
  assert len(os.listdir(tmp_path)) == 1
  # A second load reads the cache: decoding again would fail now.
  import tensorflow_datasets as tfds

  monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", lambda *a, **k: 1 / 0)
  again = input_pipeline.load_split("train[:64]", cifar_data_dir, str(tmp_path))
  np.testing.assert_array_equal(again.images, split.images)
  np.testing.assert_array_equal(again.labels, split.labels)


def test_a_damaged_cache_is_decoded_again_with_a_warning_and_an_unwritable_one_is_named(
  cifar_data_dir, tmp_path, caplog
):
  split = input_pipeline.load_split("train[:16]", cifar_data_dir, str(tmp_path))
  (cache,) = tmp_path.iterdir()
  cache.write_bytes(cache.read_bytes()[:100])  # truncated, as by a full disk
  with caplog.at_level("WARNING", logger="simjax"):
    again = input_pipeline.load_split("train[:16]", cifar_data_dir, str(tmp_path))
  assert f"the decoded-image cache {cache} is damaged" in caplog.text
  np.testing.assert_array_equal(again.images, split.images)
  with np.load(cache) as rewritten:
    np.testing.assert_array_equal(rewritten["labels"], split.labels)
  (tmp_path / "a_file").write_text("not a folder")
  with pytest.raises(
    DataError, match=r"cannot write the decoded-image cache .*a_file.*writable cache folder"
  ) as e:
    input_pipeline.load_split("train[:16]", cifar_data_dir, str(tmp_path / "a_file"))
  assert e.value.settings == ("cache_dir",)


def test_the_offline_jpeg_copy_is_labelled_as_a_stand_in(cifar_data_dir):
  split = input_pipeline.load_split("test[:8]", cifar_data_dir, None)
  features = open(os.path.join(split.info["data_dir"], "features.json")).read()
  expected = "CIFAR-10 (JPEG stand-in)" if '"jpeg"' in features else "CIFAR-10"
  assert split.info["label"] == expected


def test_bad_split_and_missing_data_are_one_clear_error(cifar_data_dir, tmp_path):
  with pytest.raises(DataError, match="bad split 'tran'"):
    input_pipeline.load_split("tran", cifar_data_dir, None)
  with pytest.raises(DataError, match="not prepared under .*point the TFDS data dir") as error:
    input_pipeline.load_split("train", str(tmp_path), None)
  assert error.value.settings == ("data_dir",)  # the front end names its flag for it


def _batch(seed=0, n=6):
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)


def test_augmentation_is_deterministic_under_a_key_and_varies_across_keys():
  images = _batch()
  config = Augmentation(crop_padding=4, flip=True, cutout=8)
  first = input_pipeline.augment(jax.random.PRNGKey(1), images, config)
  again = input_pipeline.augment(jax.random.PRNGKey(1), images, config)
  other = input_pipeline.augment(jax.random.PRNGKey(2), images, config)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert first.shape == images.shape and first.dtype == np.uint8


def test_flip_only_mirrors_and_crop_only_translates():
  images = _batch()
  flipped = np.asarray(input_pipeline.augment(jax.random.PRNGKey(0), images, Augmentation(crop_padding=0)))
  for original, out in zip(images, flipped):
    assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])
  shifted = np.asarray(
    input_pipeline.augment(jax.random.PRNGKey(0), images, Augmentation(crop_padding=2, flip=False))
  )
  for original, out in zip(images, shifted):
    # The 28x28 centre of the original appears somewhere inside the shifted image.
    centre = original[2:30, 2:30]
    assert any(np.array_equal(out[r : r + 28, c : c + 28], centre) for r in range(5) for c in range(5))


def test_cutout_blanks_one_square():
  images = np.zeros((4, 32, 32, 3), np.uint8)
  out = np.asarray(input_pipeline.augment(jax.random.PRNGKey(3), images, Augmentation(0, False, cutout=8)))
  blanked = np.any(out != 0, axis=-1)
  for mask in blanked:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert 0 < mask.sum() <= 64 and mask.sum() == len(rows) * len(cols)  # one (clipped) rectangle


def test_normalize_centres_the_channels():
  images = np.broadcast_to(np.round(input_pipeline.MEAN).astype(np.uint8), (2, 32, 32, 3))
  assert np.abs(np.asarray(input_pipeline.normalize(images))).max() < 0.02


def test_read_images_resizes_and_reports_a_non_image_by_name(tmp_path):
  Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(tmp_path / "big.png")
  Image.fromarray(np.full((32, 32), 10, np.uint8)).save(tmp_path / "gray.jpg")
  images = input_pipeline.read_images([str(tmp_path / "big.png"), str(tmp_path / "gray.jpg")])
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.raises(DataError, match=r"notes\.txt: not a readable image"):
    input_pipeline.read_images([str(tmp_path / "notes.txt")])


def test_read_images_converts_every_mode_by_its_range_and_refuses_huge_images(tmp_path, monkeypatch):
  Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(tmp_path / "grey16.png")  # mid-grey, 16 bits
  rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent black: white, as a viewer shows it
  Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
  Image.fromarray(np.full((32, 32), 7, np.uint8)).convert("P").save(tmp_path / "palette.png")
  grey16, clear, palette = input_pipeline.read_images(
    [str(tmp_path / n) for n in ("grey16.png", "clear.png", "palette.png")]
  )
  assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
  assert np.all(grey16 == 128) and np.all(clear == 255) and np.all(palette == 7)
  monkeypatch.setattr(input_pipeline, "MAX_IMAGE_PIXELS", 1000)
  with pytest.raises(DataError, match=r"grey16\.png: 32x32 pixels is larger than .*downscale it first"):
    input_pipeline.read_images([str(tmp_path / "grey16.png")])


def test_tta_views_are_the_image_its_mirror_and_their_one_pixel_shifts():
  images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3)).astype(np.float32)
  assert input_pipeline.tta_views(images, "none").shape == (1, 2, 8, 8, 3)
  flip = np.asarray(input_pipeline.tta_views(images, "flip"))
  np.testing.assert_array_equal(flip[1], images[:, :, ::-1])
  views = np.asarray(input_pipeline.tta_views(images, "flip_translate"))
  assert views.shape == (6, 2, 8, 8, 3)
  np.testing.assert_array_equal(views[0], images)
  np.testing.assert_array_equal(views[2][:, 1:, 1:], images[:, :-1, :-1])  # moved down-right
  np.testing.assert_array_equal(views[3][:, :-1, :-1], images[:, 1:, 1:])  # moved up-left
  mirror = images[:, :, ::-1]
  np.testing.assert_array_equal(views[4][:, 1:, 1:], mirror[:, :-1, :-1])  # the mirror, moved down-right
  with pytest.raises(ValueError, match="tta must be one of"):
    input_pipeline.tta_views(images, "rotate")
