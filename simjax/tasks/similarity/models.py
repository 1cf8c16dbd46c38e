"""Siamese recurrent encoders for sentence similarity (Flax Linen).

One `SentenceEncoder` (embedding + stacked RNN scanned over time by `nn.RNN`, which is
`nn.scan` underneath) is applied to both sentences, so both branches share one set of
parameters; a symmetric `head` turns the two sentence vectors into a score.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simjax.settings import setting, validate
from simjax.tasks.similarity.text import PAD, UNK

CELLS = ("rnn", "lstm", "gru")
POOLINGS = ("last", "mean", "max")
HEADS = ("manhattan", "cosine", "mlp")
# manhattan head: "fixed" is MaLSTM's exp(-||u-v||_1); "learned" scales the distance by
# size ** (p - 1), p learned from 0 (the mean per unit). With 128 units the fixed form can start
# near exp(-10): every score at the bottom of the range and a vanishing gradient.
MANHATTAN_SCALES = ("fixed", "learned")
# Initialisation of the recurrent cells: "flax" (its defaults: LeCun-normal input kernels,
# orthogonal recurrent kernels, zero biases) or "pytorch" (torch.nn.RNN/LSTM's: every weight and
# bias uniform in +-1/sqrt(hidden_size)), the study's framework. The recurrent kernel's scale
# decides how far apart two sentences' states start, which the manhattan head is sensitive to.
INITS = ("flax", "pytorch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the parameter shapes and the function the model computes."""

  vocab_size: int
  embedding_dim: int = setting(50, "Embedding size (with GloVe embeddings: the vectors' own).", lower=1)
  cell: str = setting("lstm", "Recurrent cell.", choices=CELLS)
  hidden_size: int = setting(128, "Recurrent state size.", lower=1)
  num_layers: int = setting(1, "Stacked recurrent layers.", lower=1)
  dropout: float = 0.0  # between recurrent layers, only used when num_layers > 1
  bidirectional: bool = setting(False, "Also read sentences right to left.")
  pooling: str = setting("last", "Sentence vector from the recurrent outputs.", choices=POOLINGS)
  head: str = setting("manhattan", "Similarity head.", choices=HEADS)
  manhattan_scale: str = setting(
    "fixed",
    "manhattan head: fixed = MaLSTM's exp(-||u-v||_1) (its gradient vanishes at start with a large "
    "hidden_size); learned = exp(-||u-v||_1 * size ** (p - 1)) with p learned from 0 (the mean "
    "distance per unit; p = 1 is MaLSTM's sum).",
    choices=MANHATTAN_SCALES,
    added_later=True,
  )
  mlp_hidden: int = setting(128, "Hidden units of the mlp head.", lower=1)
  score_min: float = 0.0
  score_max: float = 5.0
  freeze_embeddings: bool = setting(False, "Keep the embedding table fixed during training.")
  init: str = setting(
    "flax",
    "Recurrent cells' initialisation: flax's defaults, or pytorch's (every weight and bias uniform "
    "in +-1/sqrt(hidden_size): the study's framework).",
    choices=INITS,
    added_later=True,
  )
  # Regularisers (training only).
  word_dropout: float = setting(
    0.0,
    "Training: replace each word by <unk> with this probability.",
    lower=0.0,
    upper=0.95,
    added_later=True,
  )
  embedding_dropout: float = setting(
    0.0, "Training: dropout on the embedded words.", lower=0.0, upper=0.95, added_later=True
  )

  def __post_init__(self):
    validate(self)  # choices and bounds
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.score_max <= self.score_min:
      raise ValueError(f"score range [{self.score_min}, {self.score_max}] is empty")


def _make_cell(kind: str, hidden_size: int, name: str, init: str = "flax") -> nn.RNNCellBase:
  inits = {}
  if init == "pytorch":
    bound = hidden_size**-0.5
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
    inits = {"kernel_init": uniform, "recurrent_kernel_init": uniform, "bias_init": uniform}
  if kind == "rnn":
    return nn.SimpleCell(hidden_size, name=name, **inits)
  if kind == "lstm":
    return nn.OptimizedLSTMCell(hidden_size, name=name, **inits)
  return nn.GRUCell(hidden_size, name=name, **inits)


class SentenceEncoder(nn.Module):
  """token ids [B, T] + true lengths [B] -> sentence vectors [B, D]."""

  config: ModelConfig

  @nn.compact
  def __call__(self, token_ids: jax.Array, lengths: jax.Array, *, train: bool) -> jax.Array:
    cfg = self.config
    # An empty sentence still needs a defined state: read it after one (padding) step.
    lengths = jnp.maximum(lengths, 1)
    if train and cfg.word_dropout > 0:
      dropped = jax.random.bernoulli(self.make_rng("dropout"), cfg.word_dropout, token_ids.shape)
      token_ids = jnp.where(dropped & (token_ids != PAD), UNK, token_ids)
    x = nn.Embed(cfg.vocab_size, cfg.embedding_dim, name="embedding")(token_ids)
    if cfg.embedding_dropout > 0:
      x = nn.Dropout(cfg.embedding_dropout, deterministic=not train)(x)
    for layer in range(cfg.num_layers):
      if layer > 0 and cfg.dropout > 0:
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
      forward = nn.RNN(_make_cell(cfg.cell, cfg.hidden_size, f"forward_{layer}", cfg.init))
      outputs = forward(x, seq_lengths=lengths)
      if cfg.bidirectional:
        # keep_order=True re-aligns outputs with the input; seq_lengths makes the
        # backward pass start at each sentence's last real token, not in the padding.
        backward = nn.RNN(
          _make_cell(cfg.cell, cfg.hidden_size, f"backward_{layer}", cfg.init), reverse=True, keep_order=True
        )
        outputs = jnp.concatenate([outputs, backward(x, seq_lengths=lengths)], axis=-1)
      x = outputs
    return _pool(x, lengths, cfg.pooling, cfg.bidirectional)


def _pool(outputs: jax.Array, lengths: jax.Array, pooling: str, bidirectional: bool) -> jax.Array:
  """Reduces per-step outputs [B, T, D] to one vector per sentence, ignoring padding."""
  steps = jnp.arange(outputs.shape[1])[None, :]
  mask = (steps < lengths[:, None])[..., None]
  if pooling == "mean":
    return jnp.sum(jnp.where(mask, outputs, 0.0), axis=1) / lengths[:, None].astype(outputs.dtype)
  if pooling == "max":
    return jnp.max(jnp.where(mask, outputs, -jnp.inf), axis=1)
  last = jnp.take_along_axis(outputs, (lengths - 1)[:, None, None], axis=1)[:, 0]
  if not bidirectional:
    return last
  # The backward direction has read the whole sentence at position 0.
  half = outputs.shape[-1] // 2
  return jnp.concatenate([last[:, :half], outputs[:, 0, half:]], axis=-1)


class SimilarityHead(nn.Module):
  """Two sentence vectors -> score in [score_min, score_max]; symmetric in (u, v)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
    cfg = self.config
    if cfg.head == "manhattan":  # MaLSTM (Mueller & Thyagarajan, 2016)
      distance = jnp.sum(jnp.abs(u - v), axis=-1)
      if cfg.manhattan_scale == "learned":
        # distance * size ** (p - 1) with p learned, starting at 0: the mean distance per unit
        # (a gradient at start); p = 1 is MaLSTM's sum. In this form one learning-rate-sized
        # step of p moves the scale by a factor size ** lr, so the few hundred steps of an
        # epoch can cover the whole way from mean to sum (a plain log-scale cannot).
        power = self.param("distance_power", nn.initializers.zeros, ())
        distance = distance * jnp.exp((power - 1.0) * jnp.log(float(u.shape[-1])))
      similarity = jnp.exp(-distance)
    elif cfg.head == "cosine":
      similarity = (cosine(u, v) + 1.0) / 2.0
    else:
      features = jnp.concatenate([jnp.abs(u - v), u * v], axis=-1)
      hidden = nn.tanh(nn.Dense(cfg.mlp_hidden, name="hidden")(features))
      similarity = nn.sigmoid(nn.Dense(1, name="output")(hidden)[:, 0])
    return cfg.score_min + (cfg.score_max - cfg.score_min) * similarity


class SiameseSimilarity(nn.Module):
  """Scores sentence pairs with one shared encoder."""

  config: ModelConfig

  def setup(self):
    self.encoder = SentenceEncoder(self.config)
    self.head = SimilarityHead(self.config)

  def __call__(self, ids_a, lengths_a, ids_b, lengths_b, *, train: bool = False) -> jax.Array:
    if ids_a.shape != ids_b.shape or (train and draws_dropout(self.config)):
      # Each sentence draws its own dropout masks, as it always has (fixed-seed runs unchanged).
      return self.head(self.encode(ids_a, lengths_a, train=train), self.encode(ids_b, lengths_b, train=train))
    return self.head(*self.encode_pairs(ids_a, lengths_a, ids_b, lengths_b, train=train))

  def encode(self, token_ids, lengths, *, train: bool = False) -> jax.Array:
    return self.encoder(token_ids, lengths, train=train)

  def encode_pairs(self, ids_a, lengths_a, ids_b, lengths_b, *, train: bool = False):
    """Both sentences of every pair in one scan over time: half the sequential steps, each on a
    batch twice as large (the recurrence, not the arithmetic, is what a CPU waits on)."""
    both = self.encode(jnp.concatenate([ids_a, ids_b]), jnp.concatenate([lengths_a, lengths_b]), train=train)
    return jnp.split(both, 2)

  def head_and_cosine(self, ids_a, lengths_a, ids_b, lengths_b, *, train: bool = False) -> jax.Array:
    """[2, B]: the head's score and the cosine of the two sentence vectors (evaluation)."""
    u, v = self.encode_pairs(ids_a, lengths_a, ids_b, lengths_b, train=train)
    return jnp.stack([self.head(u, v), cosine(u, v)])


def cosine(u: jax.Array, v: jax.Array) -> jax.Array:
  """Row-wise cosine similarity. sqrt(x + eps), not norm(): the norm's gradient is NaN at a zero
  vector (an empty sentence), and a zero vector scores 0."""
  return jnp.sum(u * v, -1) / jnp.sqrt(jnp.sum(u * u, -1) * jnp.sum(v * v, -1) + 1e-12)


def draws_dropout(config: ModelConfig) -> bool:
  """Whether training draws random masks (word, embedding or between-layer dropout)."""
  return (
    config.word_dropout > 0 or config.embedding_dropout > 0 or (config.num_layers > 1 and config.dropout > 0)
  )


def with_pretrained_embeddings(params: Any, matrix: jax.Array) -> Any:
  """Returns `params` with the embedding table replaced by `matrix` [vocab, dim]."""
  table = params["encoder"]["embedding"]["embedding"]
  if table.shape != matrix.shape:
    raise ValueError(f"pretrained embedding matrix has shape {matrix.shape}, model expects {table.shape}")
  params = jax.tree_util.tree_map(lambda x: x, params)  # shallow copy of the nested dicts
  params["encoder"]["embedding"]["embedding"] = jnp.asarray(matrix, table.dtype)
  return params
