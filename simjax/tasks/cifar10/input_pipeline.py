"""CIFAR-10 from TFDS (array_record, TF-free), decoded once, then kept on the accelerator.

The host decodes each split once into uint8 arrays and caches them as .npz, so later runs
skip the JPEG/PNG decoding. Training never copies batches from the host: the whole split
lives on the device, and batches are gathered, augmented and normalized there in JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, UnidentifiedImageError

from simjax import distributed, errors
from simjax.settings import setting, validate

log = logging.getLogger("simjax")

DATASET = "cifar10"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the official CIFAR-10 train set (0-255 scale).
MEAN = np.array([125.31, 122.95, 113.87], np.float32)
STD = np.array([62.99, 62.09, 66.70], np.float32)


class DataError(errors.DataError):
  """Missing or unusable image data; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class ImageSplit:
  images: np.ndarray  # uint8 [N, 32, 32, 3], NHWC
  labels: np.ndarray  # int32 [N]
  class_names: tuple[str, ...]
  info: dict  # provenance: dataset, version, split, data_dir, rows

  def __len__(self) -> int:
    return len(self.labels)


def load_split(
  split: str, data_dir: str | None, cache_dir: str | None, *, shard: tuple[int, int] | None = None
) -> ImageSplit:
  """Decoded CIFAR-10 split (TFDS slicing allowed: 'train[:5000]'); cached as .npz.

  `shard=(index, count)`: only the index-th of `count` consecutive, equal parts of the split's
  rows (the last ones may be shorter, or empty) is read and decoded: a process's part in a
  multi-process run (see `load_split_of_processes`)."""
  builder = _prepared_builder(data_dir)
  version = str(builder.info.version)
  names = tuple(builder.info.features["label"].names)
  # The official release stores PNG; a JPEG-encoded copy (e.g. an offline stand-in) loses
  # detail and scores lower, so every result says which one it came from.
  encoding = _image_encoding(builder.data_dir)
  info = {
    "dataset": DATASET,
    "version": version,
    "split": split,
    "data_dir": builder.data_dir,
    "image_encoding": encoding,
    "label": "CIFAR-10 (JPEG stand-in)" if encoding == "jpeg" else "CIFAR-10",
  }
  cache = _cache_path(cache_dir, builder.data_dir, split + (f"-shard{shard[0]}of{shard[1]}" if shard else ""))
  cached = _read_cache(cache) if cache and os.path.exists(cache) else None
  if cached is not None:
    images, labels = cached
  else:
    images, labels = _decode(builder, split, shard)
    if cache:
      _write_cache(cache, images, labels)
  info["rows"] = len(labels)
  # Reading every file to hash it is for the records, which process 0 writes.
  info["source_sha256"] = _prepared_checksums(builder.data_dir) if distributed.is_primary() else {}
  return ImageSplit(images, labels, names, info)


def _prepared_builder(data_dir: str | None):
  """The TFDS builder of CIFAR-10 in `data_dir`, prepared; one DataError line otherwise."""
  try:
    builder = tfds.builder(DATASET, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for a bad or missing data_dir
    raise DataError(
      f"cannot open TFDS {DATASET} in {data_dir or 'the default data dir'}: {e}", settings=("data_dir",)
    ) from None
  if not builder.is_prepared():
    where = os.path.join(data_dir or "~/tensorflow_datasets", DATASET)
    raise DataError(
      f"TFDS {DATASET} is not prepared under {where}: point the TFDS data dir at a folder "
      f"holding {DATASET}/{builder.info.version}/ (array_record files), or prepare it online once with "
      f"`tfds build {DATASET} --file_format=array_record`",
      settings=("data_dir",),
    )
  return builder


def _decode(builder, split: str, shard: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
  """The split's images [N, 32, 32, 3] uint8 and labels [N] int32, read from the prepared
  files (only the shard's rows, with `shard`)."""
  try:
    source = builder.as_data_source(split=split)
    count = len(source)
  except Exception as e:  # bad split strings surface here
    splits = ", ".join(sorted(builder.info.splits))
    raise DataError(
      f"bad split {split!r} for {DATASET} ({e}); use one of {splits}, e.g. 'train[:5000]'",
      settings=("train_split", "eval_split"),
    ) from None
  if count == 0:
    raise DataError(f"split {split!r} of {DATASET} is empty", settings=("train_split", "eval_split"))
  rows = range(count)
  if shard is not None:
    per = -(-count // shard[1])
    rows = range(min(count, shard[0] * per), min(count, (shard[0] + 1) * per))
  try:
    records = source.__getitems__(list(rows))
  except (OSError, RuntimeError) as e:  # a prepared folder with missing or damaged data files
    raise DataError(
      f"cannot read {DATASET} {split!r} from {builder.data_dir} ({str(e).splitlines()[0][:200]}); "
      "check the array_record files there or point the TFDS data dir at a complete copy",
      settings=("data_dir",),
    ) from None
  images = (
    np.stack([r["image"] for r in records]).astype(np.uint8)
    if records
    else np.zeros((0, 32, 32, 3), np.uint8)
  )  # a process's part of a tiny split may be empty
  labels = np.array([r["label"] for r in records], np.int32)
  return images, labels


def _write_cache(cache: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the decoded split atomically (a stopped write leaves no half file)."""
  tmp = f"{cache}.{os.getpid()}.tmp.npz"  # concurrent first runs never share a temporary file
  try:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, cache)
  except OSError as e:
    raise DataError(
      f"cannot write the decoded-image cache {cache} ({e.strerror or e}): choose a writable cache folder",
      settings=("cache_dir",),
    ) from None


def split_rows(split: str, data_dir: str | None) -> int:
  """The number of images of a split (TFDS slicing allowed), from the prepared dataset's
  record alone: nothing is read or decoded."""
  try:
    return tfds.builder(DATASET, data_dir=data_dir).info.splits[split].num_examples
  except Exception as e:  # TFDS raises several types for a missing dataset or a bad split
    raise DataError(
      f"cannot read the size of {DATASET} {split!r} in {data_dir or 'the default data dir'}: {e}",
      settings=("data_dir", "train_split", "eval_split"),
    ) from None


def load_split_of_processes(split: str, data_dir: str | None, cache_dir: str | None) -> ImageSplit:
  """`load_split` in a run of one process; in a multi-process run each process reads and
  decodes only its part of the split, and the parts are exchanged over the processes'
  collectives, so that every process holds the whole split as one process would."""
  if distributed.process_count() == 1:
    return load_split(split, data_dir, cache_dir)
  part = load_split(split, data_dir, cache_dir, shard=(jax.process_index(), jax.process_count()))
  images, labels = distributed.gather_rows((part.images, part.labels))
  return dataclasses.replace(part, images=images, labels=labels, info={**part.info, "rows": len(labels)})


def _read_cache(path: str) -> tuple[np.ndarray, np.ndarray] | None:
  """The cached (images, labels); None, with a warning, if the file is damaged (it is then
  decoded again and rewritten)."""
  try:
    with np.load(path) as saved:
      images, labels = saved["images"], saved["labels"]
    if images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(labels):
      return images, labels
    problem = f"images {images.dtype}{list(images.shape)}, {len(labels)} labels"
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    problem = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
  log.warning("the decoded-image cache %s is damaged (%s): decoding the split again", path, problem)
  return None


@functools.lru_cache(maxsize=8)
def _prepared_checksums(prepared_dir: str) -> dict[str, str]:
  """sha256 of every file of the prepared dataset (array_record shards, metadata): which
  bytes a result came from, so a run elsewhere can tell if its copy differs."""
  digests = {}
  for name in sorted(os.listdir(prepared_dir)):
    path = os.path.join(prepared_dir, name)
    if os.path.isfile(path):
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          digest.update(chunk)
      digests[name] = digest.hexdigest()
  return digests


def _image_encoding(prepared_dir: str) -> str:
  """How the prepared files store images, as their features.json says (TFDS's default: png)."""
  try:
    with open(os.path.join(prepared_dir, "features.json")) as f:
      features = json.load(f)["featuresDict"]["features"]
    return features["image"]["image"].get("encodingFormat", "png")
  except (OSError, KeyError, ValueError):
    return "png"


def _cache_path(cache_dir: str | None, prepared_dir: str, split: str) -> str | None:
  if not cache_dir:
    return None
  # The prepared folder's path and files identify the data; the split names the rows.
  files = sorted(os.listdir(prepared_dir))
  stamp = [f"{f}:{os.path.getsize(os.path.join(prepared_dir, f))}" for f in files]
  key = hashlib.sha256("|".join([os.path.abspath(prepared_dir), *stamp]).encode()).hexdigest()[:12]
  safe_split = re.sub(r"[^A-Za-z0-9_.%:-]", "_", split).replace(":", "-")
  return os.path.join(cache_dir, f"{DATASET}-{key}-{safe_split}.npz")


# Larger images are refused before decoding (PIL's own bomb check allows ~178 megapixels):
# a 32x32 classifier gains nothing from them, and decoding one takes seconds and gigabytes.
MAX_IMAGE_PIXELS = 40_000_000


def read_images(paths: list[str]) -> np.ndarray:
  """Image files -> uint8 [N, 32, 32, 3] (RGB; other sizes are resized to 32x32). Every PIL
  mode is converted by its value range: 16- and 32-bit greyscale are scaled to 8 bits (PIL's
  own RGB conversion clips them, so that a 16-bit photo reads as almost all white)."""
  images = []
  for path in paths:
    try:
      with warnings.catch_warnings():
        # PIL warns of an image over its own limit (~89 megapixels), which the lower one
        # below refuses anyway: its warning would only add lines before that error.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
      with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
          raise _too_large(path, f"{width}x{height} pixels")
        rgb = _to_rgb(image)
        if rgb.size != (32, 32):
          rgb = rgb.resize((32, 32), Image.BILINEAR)
        images.append(np.asarray(rgb, np.uint8))
    except Image.DecompressionBombError:
      # PIL refuses twice its own limit while it opens the file, before the size is known here.
      raise _too_large(path, f"more than {2 * Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels") from None
    except (FileNotFoundError, IsADirectoryError) as e:
      raise DataError(f"{errors.path_problem(path, e)}: pass PNG or JPEG files") from None
    except (UnidentifiedImageError, OSError) as e:
      # The file system's reason (e.g. "Permission denied"), else PIL's kind of failure.
      why = e.strerror if e.errno is not None else e.__class__.__name__
      raise DataError(f"{path}: not a readable image ({why}); pass PNG or JPEG files") from None
  return np.stack(images)


def _too_large(path: str, size: str) -> DataError:
  return DataError(
    f"{path}: {size} is larger than the {MAX_IMAGE_PIXELS // 1_000_000} megapixels read here; "
    "downscale it first (the model sees 32x32)"
  )


def _to_rgb(image: Image.Image) -> Image.Image:
  if image.mode.startswith("I;16") or image.mode in ("I", "F"):
    values = np.asarray(image, np.float64)
    if image.mode.startswith("I;16"):
      scale = 65535.0
    else:  # 32-bit: no fixed range; its own maximum is white
      values = values - min(values.min(), 0.0)
      scale = max(values.max(), 1.0)
    grey = np.clip(np.round(values / scale * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    # Transparent pixels over white, as a viewer shows them (PIL's RGB conversion drops alpha).
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return image.convert("RGB")


# --------------------------------------------------------------------------------------
# On-device preprocessing (inside jit)
# --------------------------------------------------------------------------------------
def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 NHWC -> zero-mean, unit-variance per channel."""
  return ((images.astype(jnp.float32) - MEAN) / STD).astype(dtype)


TTA_MODES = ("none", "flip", "flip_translate")


def tta_views(images: jax.Array, mode: str) -> jax.Array:
  """Test-time augmentation views of a batch [B, H, W, C] -> [V, B, H, W, C].

  none: the images (V=1); flip: and their mirror images (V=2); flip_translate: each of those
  also shifted by one pixel up-left and one pixel down-right, reflect-padded (V=6). The
  prediction is the mean of the views' logits.
  """
  if mode not in TTA_MODES:
    raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
  views = [images]
  if mode in ("flip", "flip_translate"):
    views.append(images[:, :, ::-1])
  if mode == "flip_translate":
    height, width = images.shape[1:3]
    for image in list(views):
      padded = jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
      views.append(padded[:, :height, :width])  # content moves down-right by one pixel
      views.append(padded[:, 2:, 2:])  # content moves up-left by one pixel
  return jnp.stack(views)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  crop_padding: int = setting(4, "Random translation by up to this many pixels (0: off).", lower=0)
  flip: bool = setting(True, "Random horizontal flips.")
  cutout: int = setting(0, "Side of a random square blanked per image (0: off).", lower=0)
  alternate_flip: bool = setting(
    False,
    "With flip: flip each image on alternate epochs (a fixed random half of them in the first) "
    "instead of at random, so every image is seen both ways every two epochs.",
    added_later=True,
  )

  def __post_init__(self):
    validate(self)


def alternate_flips(key: jax.Array, indices: jax.Array, epoch: jax.Array) -> jax.Array:
  """Which images (by their row in the split) are flipped in `epoch` (0-based) under
  Augmentation.alternate_flip: a fixed random half (drawn from `key`, per image) in even
  epochs, the other half in odd ones."""
  first = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(indices)
  return first ^ (epoch % 2 == 1)


def augment(
  key: jax.Array, images: jax.Array, config: Augmentation, flips: jax.Array | None = None
) -> jax.Array:
  """Random crop-with-padding, horizontal flip and cutout of a uint8 batch [B, H, W, C].

  Only pixels move: labels are untouched. Deterministic for a given key. `flips` [B] gives
  the flips under Augmentation.alternate_flip (see alternate_flips) instead of drawing them.
  """
  batch, height, width, _ = images.shape
  crop_key, flip_key, cutout_key = jax.random.split(key, 3)
  if config.crop_padding:
    pad = config.crop_padding
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
    images = jax.vmap(lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (height, width, 3)))(
      padded, offsets
    )
  if config.flip:
    if config.alternate_flip and flips is None:
      raise ValueError("alternate_flip needs the batch's flips (input_pipeline.alternate_flips)")
    if not config.alternate_flip:
      flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
  if config.cutout:
    centers = jax.random.randint(cutout_key, (batch, 2), 0, jnp.array([height, width]))
    # A cutout x cutout square whose top-left corner is centre - cutout // 2 (clipped at edges).
    top_left = centers - config.cutout // 2
    rows = jnp.arange(height)[None, :, None] - top_left[:, 0, None, None]
    cols = jnp.arange(width)[None, None, :] - top_left[:, 1, None, None]
    inside = (rows >= 0) & (rows < config.cutout) & (cols >= 0) & (cols < config.cutout)
    mean = jnp.asarray(np.round(MEAN), images.dtype)
    images = jnp.where(inside[..., None], mean, images)
  return images
