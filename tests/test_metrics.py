import numpy as np
import pytest
import scipy.stats

from simjax import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pearson_spearman_mse_match_scipy(seed):
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, 6, size=300).astype(np.float32)  # many ties, like STS scores
  predictions = targets + rng.normal(size=300)
  predictions[:20] = np.round(predictions[:20])  # ties on the prediction side too
  assert metrics.pearson(predictions, targets) == pytest.approx(
    scipy.stats.pearsonr(predictions, targets)[0], abs=1e-6
  )
  assert metrics.spearman(predictions, targets) == pytest.approx(
    scipy.stats.spearmanr(predictions, targets)[0], abs=1e-6
  )
  assert metrics.mse(predictions, targets) == pytest.approx(np.mean((predictions - targets) ** 2), rel=1e-9)


def test_ranks_match_scipy_average_ranks():
  values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
  np.testing.assert_allclose(metrics.average_ranks(values), scipy.stats.rankdata(values))


def test_constant_predictions_give_nan_correlation_not_an_error():
  assert np.isnan(metrics.pearson(np.ones(5), np.arange(5)))


def test_length_mismatch_is_refused():
  with pytest.raises(ValueError, match="equally long"):
    metrics.pearson(np.ones(3), np.ones(4))
