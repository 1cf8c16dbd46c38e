import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simjax.tasks.similarity.models import ModelConfig, SiameseSimilarity, with_pretrained_embeddings

VOCAB = 20


def _init(config, length=7, seed=0):
  model = SiameseSimilarity(config)
  ids = jnp.ones((2, length), jnp.int32)
  lengths = jnp.array([3, length], jnp.int32)
  return model, model.init(jax.random.PRNGKey(seed), ids, lengths, ids, lengths)


def _tiny(**overrides):
  return ModelConfig(vocab_size=VOCAB, embedding_dim=6, hidden_size=5, mlp_hidden=4, **overrides)


@pytest.mark.parametrize(
  "cell,bidirectional,pooling",
  [
    ("rnn", False, "last"),
    ("gru", False, "last"),
    ("lstm", False, "last"),
    ("lstm", True, "last"),
    ("gru", True, "mean"),
    ("rnn", True, "max"),
  ],
)
def test_sentence_vector_ignores_padding(cell, bidirectional, pooling):
  config = _tiny(cell=cell, bidirectional=bidirectional, pooling=pooling, num_layers=2)
  model, variables = _init(config)
  sentence = np.array([4, 7, 2, 9])
  short = np.zeros((1, 8), np.int32)
  short[0, :4] = sentence
  long = np.full((1, 32), 3, np.int32)  # padding filled with real word ids on purpose
  long[0, :4] = sentence
  lengths = jnp.array([4])
  vector_short = model.apply(variables, short, lengths, method=SiameseSimilarity.encode)
  vector_long = model.apply(variables, long, lengths, method=SiameseSimilarity.encode)
  assert vector_short.shape == (1, 5 * (2 if bidirectional else 1))
  np.testing.assert_allclose(vector_short, vector_long, rtol=1e-5, atol=1e-6)


def test_both_sentences_go_through_one_set_of_encoder_parameters():
  model, variables = _init(_tiny())
  params = variables["params"]
  assert set(params) == {"encoder"}  # the manhattan head has no parameters
  # Changing the single encoder changes the encoding of both sides identically.
  ids = jnp.array([[4, 5, 6, 0]])
  lengths = jnp.array([3])
  u = model.apply(variables, ids, lengths, method=SiameseSimilarity.encode)
  score = model.apply(variables, ids, lengths, ids, lengths)
  np.testing.assert_allclose(score, 5.0 * jnp.exp(-jnp.sum(jnp.abs(u - u))), rtol=1e-6)
  np.testing.assert_allclose(score, [5.0], rtol=1e-6)  # identical sentences: maximal similarity


@pytest.mark.parametrize("head", ["manhattan", "cosine", "mlp"])
def test_scores_are_symmetric_and_in_range(head):
  config = _tiny(head=head, score_min=1.0, score_max=5.0)
  model, variables = _init(config)
  rng = np.random.default_rng(0)
  a, b = rng.integers(2, VOCAB, (2, 6, 9))
  la, lb = rng.integers(1, 10, (2, 6))
  ab = model.apply(variables, a, la, b, lb)
  ba = model.apply(variables, b, lb, a, la)
  np.testing.assert_allclose(ab, ba, rtol=1e-6)
  assert ab.shape == (6,)
  assert np.all((ab >= 1.0) & (ab <= 5.0))


def test_empty_and_unknown_sentences_get_finite_scores():
  model, variables = _init(_tiny(pooling="mean"))
  ids = jnp.array([[0, 0, 0], [1, 1, 0]])  # empty; only <unk>
  lengths = jnp.array([0, 2])
  assert np.all(np.isfinite(model.apply(variables, ids, lengths, ids[::-1], lengths[::-1])))


@pytest.mark.parametrize("head", ["manhattan", "cosine", "mlp"])
def test_empty_sentence_gives_finite_gradients(head):
  model, variables = _init(_tiny(head=head))
  params = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])  # zero vectors: the worst case
  ids = jnp.zeros((1, 8), jnp.int32)
  lengths = jnp.array([0])

  def loss(p):
    return jnp.sum((model.apply({"params": p}, ids, lengths, ids, lengths) - 2.0) ** 2)

  grads = jax.grad(loss)(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_dropout_only_between_layers_and_only_in_training():
  config = _tiny(num_layers=3, dropout=0.5)
  model, variables = _init(config)
  ids = jnp.array([[4, 5, 6, 7]])
  lengths = jnp.array([4])
  deterministic = [model.apply(variables, ids, lengths, ids[:, ::-1], lengths) for _ in range(2)]
  np.testing.assert_array_equal(*deterministic)
  noisy = [
    model.apply(
      variables, ids, lengths, ids[:, ::-1], lengths, train=True, rngs={"dropout": jax.random.PRNGKey(k)}
    )
    for k in range(2)
  ]
  assert not np.allclose(*noisy)


def _encoded_one_by_one(model, ids_a, lengths_a, ids_b, lengths_b, train):
  """The score of each sentence encoded on its own, in the model's scope (its dropout streams)."""
  return lambda m: m.head(m.encode(ids_a, lengths_a, train=train), m.encode(ids_b, lengths_b, train=train))


@pytest.mark.parametrize("cell,bidirectional", [("rnn", False), ("lstm", True), ("gru", True)])
def test_a_pair_batch_scores_as_its_sentences_encoded_one_by_one(cell, bidirectional):
  # Without dropout, both sentences of the pairs go through one scan: the scores and their
  # gradients are those of each sentence encoded on its own, to float32 rounding (the larger
  # batch's matmuls may sum in another order).
  config = _tiny(cell=cell, bidirectional=bidirectional, head="mlp", num_layers=2)
  model, variables = _init(config)
  pairs = (jnp.array([[4, 5, 6, 0], [7, 0, 0, 0]]), jnp.array([3, 1]))
  pairs += (jnp.array([[9, 8, 7, 6], [5, 4, 0, 0]]), jnp.array([4, 2]))
  together = lambda params: model.apply(params, *pairs, train=True)  # noqa: E731
  one_by_one = lambda params: model.apply(params, method=_encoded_one_by_one(model, *pairs, True))  # noqa: E731
  np.testing.assert_allclose(together(variables), one_by_one(variables), rtol=1e-6)
  grads = [jax.grad(lambda p, f=f: jnp.sum(f(p)))(variables) for f in (together, one_by_one)]
  for got, want in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # With dropout in training, each sentence draws its own masks from the same streams as when
  # it was encoded on its own: the same numbers exactly.
  model, variables = _init(
    _tiny(cell=cell, bidirectional=bidirectional, word_dropout=0.3, embedding_dropout=0.2)
  )
  rngs = {"dropout": jax.random.PRNGKey(1)}
  np.testing.assert_array_equal(
    model.apply(variables, *pairs, train=True, rngs=rngs),
    model.apply(variables, method=_encoded_one_by_one(model, *pairs, True), rngs=rngs),
  )


def test_pretrained_embeddings_are_loaded_and_shape_checked():
  _, variables = _init(_tiny())
  matrix = np.arange(VOCAB * 6, dtype=np.float32).reshape(VOCAB, 6)
  params = with_pretrained_embeddings(variables["params"], matrix)
  np.testing.assert_array_equal(params["encoder"]["embedding"]["embedding"], matrix)
  with pytest.raises(ValueError, match="shape"):
    with_pretrained_embeddings(variables["params"], matrix[:, :3])


def test_bad_config_is_one_clear_error():
  with pytest.raises(ValueError, match="cell must be one of"):
    _tiny(cell="transformer")


def _scores_and_encoder_gradient(config, seed=0):
  rng = np.random.default_rng(seed)
  a, b = (jnp.asarray(rng.integers(2, config.vocab_size, (16, 12)), jnp.int32) for _ in range(2))
  lengths = jnp.full((16,), 12, jnp.int32)
  model = SiameseSimilarity(config)
  params = model.init(jax.random.PRNGKey(seed), a, lengths, b, lengths)["params"]
  loss = lambda p: jnp.mean((model.apply({"params": p}, a, lengths, b, lengths) - 2.5) ** 2)  # noqa: E731
  gradient = jax.grad(loss)(params)["encoder"]
  norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(gradient))))
  return model.apply({"params": params}, a, lengths, b, lengths), norm


def test_the_learned_manhattan_scale_keeps_the_gradient_alive_at_the_study_size():
  # MaLSTM's exp(-||u-v||_1) over 128 units starts every pair of different sentences near 0,
  # where its gradient vanishes: the study's RNN (hidden 128) cannot leave that corner.
  study = ModelConfig(vocab_size=200, embedding_dim=128, hidden_size=128, cell="rnn")
  scores, gradient = _scores_and_encoder_gradient(study)
  assert float(scores.max()) < 1e-6 and gradient < 1e-6
  scores, gradient = _scores_and_encoder_gradient(dataclasses.replace(study, manhattan_scale="learned"))
  assert 1.0 < float(scores.min()) and float(scores.max()) < 5.0 and gradient > 1e-2
  # Identical sentences still score the top of the range, whatever the scale.
  model, variables = _init(_tiny(manhattan_scale="learned"))
  ids, lengths = jnp.array([[4, 5, 6, 0]]), jnp.array([3])
  np.testing.assert_allclose(model.apply(variables, ids, lengths, ids, lengths), [5.0], rtol=1e-6)
  assert set(variables["params"]) == {"encoder", "head"}


def test_word_and_embedding_dropout_act_in_training_only():
  config = _tiny(word_dropout=0.5, embedding_dropout=0.3, head="mlp")
  model, variables = _init(config)
  ids = jnp.array([[4, 5, 6, 7, 8, 9, 0, 0]])
  lengths = jnp.array([6])
  score = lambda key, train: model.apply(  # noqa: E731
    variables, ids, lengths, ids[:, ::-1], lengths, train=train, rngs={"dropout": key}
  )
  evaluated = [score(jax.random.PRNGKey(k), False) for k in range(3)]
  assert all(np.array_equal(e, evaluated[0]) for e in evaluated)  # deterministic in evaluation
  trained = {float(score(jax.random.PRNGKey(k), True)[0]) for k in range(6)}
  assert len(trained) > 1  # a different mask per key in training
  baseline = _tiny(head="mlp")
  np.testing.assert_allclose(
    evaluated[0], SiameseSimilarity(baseline).apply(variables, ids, lengths, ids[:, ::-1], lengths), rtol=1e-6
  )  # the same parameters and function when not training


def test_pytorch_initialisation_lets_the_study_rnn_start_with_a_gradient():
  # torch.nn.RNN's weights are uniform in +-1/sqrt(hidden): the study's RNN under its framework's
  # initialisation starts with its two sentence states close enough for the head to learn.
  study = ModelConfig(vocab_size=200, embedding_dim=128, hidden_size=128, cell="rnn", init="pytorch")
  model, variables = _init(study)
  cell = variables["params"]["encoder"]["forward_0"]
  for leaf in jax.tree_util.tree_leaves(cell):
    assert float(jnp.abs(leaf).max()) <= 128**-0.5
  scores, gradient = _scores_and_encoder_gradient(study)
  flax_scores, flax_gradient = _scores_and_encoder_gradient(dataclasses.replace(study, init="flax"))
  assert float(scores.min()) > 1e-5 > 1e-10 > float(flax_scores.max())
  assert gradient > 1e-3 > 1e-6 > flax_gradient
