import warnings

import numpy as np
import pytest
import scipy.stats

from simjax import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pearson_spearman_mse_match_scipy(seed):
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, 6, size=300).astype(np.float32)  # many ties, like STS scores
  predictions = (targets + rng.normal(size=300)).astype(np.float32)
  predictions[:20] = np.round(predictions[:20])  # ties on the prediction side too
  x, y = predictions.astype(np.float64), targets.astype(np.float64)
  assert metrics.pearson(predictions, targets) == scipy.stats.pearsonr(x, y).statistic
  assert metrics.spearman(predictions, targets) == scipy.stats.spearmanr(x, y).statistic
  assert metrics.mse(predictions, targets) == pytest.approx(np.mean((x - y) ** 2), rel=1e-12)
  assert all(type(value) is float for value in metrics.regression_metrics(predictions, targets).values())


@pytest.mark.parametrize(
  "predictions, targets", [(np.ones(5), np.arange(5)), (np.arange(5), np.ones(5)), ([1.0], [2.0])]
)
def test_constant_side_gives_nan_correlation_without_error_or_warning(predictions, targets):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert np.isnan(metrics.pearson(predictions, targets))
    assert np.isnan(metrics.spearman(predictions, targets))


def test_nan_predictions_give_nan_correlations():
  predictions, targets = [1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0]
  assert np.isnan(metrics.pearson(predictions, targets))
  assert np.isnan(metrics.spearman(predictions, targets))


@pytest.mark.parametrize("predictions, targets", [(np.ones(3), np.ones(4)), ([], [])])
def test_unequal_or_empty_inputs_are_refused(predictions, targets):
  with pytest.raises(ValueError, match="equally long, non-empty"):
    metrics.pearson(predictions, targets)
