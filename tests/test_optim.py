import numpy as np
import optax
import pytest

from simjax import optim


def _rates(config, steps_per_epoch=10, epochs=6):
  schedule = optim.learning_rate_schedule(config, steps_per_epoch, steps_per_epoch * epochs)
  return np.array([schedule(step) for step in range(steps_per_epoch * epochs)])


def test_step_decay_multiplies_every_decay_epochs():
  rates = _rates(optim.OptimConfig(learning_rate=0.1, lr_schedule="step", decay_factor=0.5, decay_epochs=2))
  np.testing.assert_allclose(rates[[0, 19, 20, 39, 40]], [0.1, 0.1, 0.05, 0.05, 0.025], rtol=1e-6)


def test_warmup_then_cosine_to_zero():
  rates = _rates(optim.OptimConfig(learning_rate=1.0, lr_schedule="warmup_cosine", warmup_epochs=1))
  assert rates[0] == 0.0 and rates[5] == pytest.approx(0.5)
  assert rates[10] == pytest.approx(1.0) and rates[-1] < 0.01
  assert np.all(np.diff(rates[10:]) <= 1e-7)


def test_constant_and_plateau_are_flat_per_step():
  for schedule in ("constant", "plateau"):
    np.testing.assert_allclose(_rates(optim.OptimConfig(learning_rate=0.3, lr_schedule=schedule)), 0.3)


def test_plateau_scale_only_moves_when_advanced_with_a_stalled_dev_loss():
  config = optim.OptimConfig(lr_schedule="plateau", plateau_patience=2, decay_factor=0.1)
  transform = optim.plateau_transform(config)
  state = transform.init(None)
  scales = []
  for dev_loss in [3.0, 2.0, 2.5, 2.4, 1.0, 1.5, 1.5]:
    state = optim.advance_plateau(transform, state, dev_loss)
    scales.append(float(state.scale))
  # two epochs without a new best (2.5, 2.4) -> x0.1; again (1.5, 1.5) -> x0.1.
  np.testing.assert_allclose(scales, [1, 1, 1, 0.1, 0.1, 0.1, 0.01], rtol=1e-6)


def test_gradient_clipping_and_sgd():
  tx = optim.make_optimizer(optim.OptimConfig(optimizer="sgd", learning_rate=1.0, grad_clip_norm=1.0), 1, 1)
  updates, _ = tx.update({"w": np.array([3.0, 4.0])}, tx.init({"w": np.zeros(2)}))
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)
  assert isinstance(tx, optax.GradientTransformation)


@pytest.mark.parametrize(
  "bad,message",
  [
    (dict(optimizer="lbfgs"), "optimizer must be one of"),
    (dict(lr_schedule="warmup_cosine"), "warmup_epochs > 0"),
    (dict(learning_rate=float("inf")), "learning_rate"),
    (dict(plateau_patience=0), "plateau_patience"),
  ],
)
def test_bad_settings_are_refused_with_the_reason(bad, message):
  with pytest.raises(ValueError, match=message):
    optim.OptimConfig(**bad)
