"""A stop request that arrives at a chosen step, as a SIGTERM during that step would."""

from simjax import loop


class StopAt(loop.StopRequest):
  """Requested when the task checks after the run's `step`-th step (1-based, counted over
  every epoch this object sees)."""

  def __init__(self, step: int, reason: str = "SIGTERM"):
    super().__init__()
    self.left, self.stop_reason = step, reason

  def __call__(self) -> bool:
    self.left -= 1
    if self.left == 0:
      self.request(self.stop_reason)
    return self.requested
