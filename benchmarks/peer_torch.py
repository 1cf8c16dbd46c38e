r"""simjax's own train steps beside the same networks written in PyTorch, on this CPU.

Two networks, each as its flagfile trains it:
- `resnet`: cnn_resnet.flags' ResNet (width 64, BatchNorm, residual stages), batch 128, float32:
  a random crop (reflect padding 4) and flip, normalization, forward, label-smoothed
  cross-entropy (0.1), backward, Nesterov SGD with weight decay. simjax's side is the run's own
  compiled host-loop step (simjax.tasks.cifar10.task: epoch_programs + compile_epoch), one seed.
- `lstm`: lstm.flags' Siamese BiLSTM (50-d embeddings, 128 units each way, max pooling over
  the real tokens, an MLP head on |u-v| and u*v, Adam, gradient clipping at 5), batch 64, on
  STS-B train's own batches (its sentence lengths, bucketed as runs bucket them). simjax's
  side is the run's jitted train step (simjax.tasks.similarity.task.train_step); PyTorch's
  packs each batch's sequences (pack_padded_sequence), as PyTorch users do.

The same batches go to both; the frameworks alternate in rounds of STEPS steps after warm-up,
each with every core (torch.set_num_threads: the CPU count; XLA's CPU backend uses every core),
and the medians over rounds are written to OUT with versions, threads and the CPU's model and
flags. Beside them: each step's FLOPs (XLA's cost analysis of simjax's step) over the FLOP/s
this CPU reaches in a large float32 matmul (the "physical limit" fraction of each framework).

PyTorch is needed for this benchmark only (never to train). PyPI's Linux wheel pulls several
GB of CUDA libraries even for CPU use; the CPU build is smaller:
  pip install torch --index-url https://download.pytorch.org/whl/cpu

  python benchmarks/peer_torch.py [--out=benchmarks/peer_torch_cpu.json] [--rounds=5] [--steps=5]

Run it on an otherwise idle machine. The LSTM reads STS-B from TFDS_DATA_DIR (and
SIMJAX_MANUAL_DIR) as any run does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from simjax import optim, run_records, sharding  # noqa: E402
from simjax.tasks.cifar10 import input_pipeline as cifar_input  # noqa: E402
from simjax.tasks.cifar10 import task as cifar  # noqa: E402
from simjax.tasks.cifar10.models import ModelConfig as CnnConfig  # noqa: E402
from simjax.tasks.similarity import datasets, input_pipeline, text  # noqa: E402
from simjax.tasks.similarity import task as similarity  # noqa: E402
from simjax.tasks.similarity.models import ModelConfig as SentenceConfig  # noqa: E402

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError:
  sys.exit(
    "error: this benchmark needs PyTorch: pip install torch --index-url https://download.pytorch.org/whl/cpu "
    "(the CPU build; PyPI's Linux wheel brings several GB of CUDA libraries)"
  )

RESNET_BATCH, LSTM_BATCH = 128, 64  # cnn_resnet.flags, lstm.flags
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)  # only the cost matters: fixed constants
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


# --------------------------------------------------------------------------------------
# The ResNet
# --------------------------------------------------------------------------------------
def jax_resnet(images: np.ndarray, labels: np.ndarray, steps: int):
  """simjax's compiled host-loop step of cnn_resnet.flags and its batches: (step(state, i), state)."""
  model = CnnConfig(architecture="resnet", width=64)
  optim_config = optim.OptimConfig(
    optimizer="nesterov", learning_rate=0.4, weight_decay=5e-4, lr_schedule="onecycle"
  )
  mesh = sharding.data_mesh()
  state = cifar.create_train_state([0], model, optim_config, steps_per_epoch=steps, total_steps=steps)
  state = jax.device_put(state, sharding.replicated(mesh))
  arrays = sharding.replicate((images, labels), mesh)
  programs = cifar.epoch_programs(
    mesh,
    batch_size=RESNET_BATCH,
    steps=steps,
    augmentation=cifar_input.Augmentation(),
    label_smoothing=0.1,
    compute_dtype=jnp.float32,
  )
  compiled = cifar.compile_epoch(programs, state, *arrays, fused=False)
  batches = list(compiled.plan(*arrays, cifar.epoch_keys([0], 1)).batches)
  step_program = compiled.step()

  def step(state, i):
    return step_program(state, *arrays, batches[i % len(batches)])

  cost = step_program.cost_analysis()  # no loops in this step: every op counted
  return step, state, (cost[0] if isinstance(cost, list) else cost).get("flops")


class TorchStage(nn.Module):
  def __init__(self, inputs: int, features: int):
    super().__init__()
    self.conv_0 = nn.Conv2d(inputs, features, 3, padding=1, bias=False)
    self.bn_0 = nn.BatchNorm2d(features, momentum=0.1, eps=1e-5)
    self.conv_1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
    self.bn_1 = nn.BatchNorm2d(features, momentum=0.1, eps=1e-5)

  def forward(self, x):
    y1 = F.relu(self.bn_0(self.conv_0(x)))
    return F.relu(self.bn_1(self.conv_1(y1)) + y1)


class TorchResNet(nn.Module):
  def __init__(self, width: int = 64):
    super().__init__()
    self.stages = nn.ModuleList(
      [TorchStage(3, width), TorchStage(width, 2 * width), TorchStage(2 * width, 4 * width)]
    )
    self.logits = nn.Linear(4 * width, 10)

  def forward(self, x):
    x = F.max_pool2d(self.stages[0](x), 2)
    x = F.avg_pool2d(self.stages[1](x), 2)
    x = self.stages[2](x).mean(dim=(2, 3))
    return self.logits(x)


def torch_resnet(images: np.ndarray, labels: np.ndarray, channels_last: bool):
  model = TorchResNet()
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(memory_format=memory_format)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
  data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
  targets = torch.from_numpy(labels.astype(np.int64))
  mean, std = torch.from_numpy(MEAN).view(1, 3, 1, 1), torch.from_numpy(STD).view(1, 3, 1, 1)
  generator = torch.Generator().manual_seed(0)

  def step(i):
    rows = torch.randint(0, len(data), (RESNET_BATCH,), generator=generator)
    x = data[rows].float() / 255.0
    x = F.pad(x, (4, 4, 4, 4), mode="reflect")  # random crop: one offset per image
    dy, dx = torch.randint(0, 9, (2, RESNET_BATCH), generator=generator)
    x = torch.stack([x[n, :, dy[n] : dy[n] + 32, dx[n] : dx[n] + 32] for n in range(RESNET_BATCH)])
    flip = torch.rand(RESNET_BATCH, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    x = ((x - mean) / std).contiguous(memory_format=memory_format)
    loss = F.cross_entropy(model(x), targets[rows], label_smoothing=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  return step


# --------------------------------------------------------------------------------------
# The Siamese BiLSTM
# --------------------------------------------------------------------------------------
def stsb_batches(steps: int) -> tuple[list[dict[str, np.ndarray]], int]:
  """STS-B train's own batches (lstm.flags: batch 64, at most 64 tokens), `steps` of them, and
  the vocabulary's size."""
  pairs = datasets.load_pairs("stsb", "train", None, os.environ.get("SIMJAX_MANUAL_DIR"))
  tokens = [text.tokenize(s) for s in pairs.sentence1 + pairs.sentence2]
  vocab = text.Vocabulary.build(tokens)
  encoded = input_pipeline.encode_pairs(pairs.sentence1, pairs.sentence2, pairs.score, vocab, 64)
  order = input_pipeline.batches(
    encoded, LSTM_BATCH, 64, shuffle_rng=np.random.default_rng(0), bucket_order_rng=np.random.default_rng(1)
  )
  return [b for _, b in zip(range(steps), order)], len(vocab)


def jax_lstm(batches, vocab_size: int):
  model = SentenceConfig(
    vocab_size=vocab_size, cell="lstm", hidden_size=128, bidirectional=True, pooling="max", head="mlp"
  )
  optim_config = optim.OptimConfig(optimizer="adam", learning_rate=1e-3, grad_clip_norm=5.0)
  state = similarity.create_train_state([0], model, optim_config, steps_per_epoch=1, total_steps=1)
  stacked = [input_pipeline.stack_replica_batches([b]) for b in batches]  # one seed, as a run stacks them

  def step(state, i):
    return similarity.train_step(state, stacked[i % len(stacked)])

  # XLA's cost analysis counts a loop's body once (the LSTM's scan over tokens): the FLOPs are
  # counted here instead, for the recurrent matmuls that dominate them (an estimate).
  embedding, hidden = model.embedding_dim, model.hidden_size
  per_token = 2 * 4 * (embedding + hidden) * hidden  # one direction's gates, multiply-adds
  tokens = [b["ids_a"].shape[1] for b in batches]
  flops = 3 * 2 * 2 * LSTM_BATCH * statistics.mean(tokens) * per_token  # fwd+bwd, 2 sentences, 2 directions
  return step, state, flops, dataclasses.asdict(model)


class TorchSiamese(nn.Module):
  def __init__(self, vocab_size: int, embedding_dim: int = 50, hidden: int = 128, mlp_hidden: int = 128):
    super().__init__()
    self.embedding = nn.Embedding(vocab_size, embedding_dim)
    self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True, bidirectional=True)
    self.hidden = nn.Linear(4 * hidden, mlp_hidden)
    self.output = nn.Linear(mlp_hidden, 1)

  def encode(self, ids, lengths):
    packed = nn.utils.rnn.pack_padded_sequence(
      self.embedding(ids), lengths.clamp(min=1), batch_first=True, enforce_sorted=False
    )
    outputs, _ = self.lstm(packed)
    padded, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, padding_value=float("-inf"))
    return padded.max(dim=1).values  # max over the real tokens

  def forward(self, ids_a, lengths_a, ids_b, lengths_b):
    u, v = self.encode(ids_a, lengths_a), self.encode(ids_b, lengths_b)
    hidden = torch.tanh(self.hidden(torch.cat([(u - v).abs(), u * v], dim=-1)))
    return torch.sigmoid(self.output(hidden)[:, 0]) * 5.0


def torch_lstm(batches, vocab_size: int):
  model = TorchSiamese(vocab_size)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  tensors = [
    {
      k: torch.from_numpy(np.asarray(v))
      for k, v in b.items()
      if k in ("ids_a", "lengths_a", "ids_b", "lengths_b", "score", "weight")
    }
    for b in batches
  ]

  def step(i):
    b = tensors[i % len(tensors)]
    predictions = model(b["ids_a"], b["lengths_a"].long(), b["ids_b"], b["lengths_b"].long())
    weight = b["weight"].float()
    loss = torch.sum(weight * (predictions - b["score"].float()) ** 2) / weight.sum().clamp(min=1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return loss

  return step


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------
def alternate(jax_step, state, torch_step, *, rounds: int, steps: int, warmup: int = 2):
  """Seconds per step of each framework, per round (the frameworks alternate), after `warmup`
  steps of each (every batch shape the rounds meet: JAX compiles a program per shape), and the
  JAX state reached (the step donates the state it is given)."""
  for i in range(warmup):  # compile / allocate
    state, metrics = jax_step(state, i)
    jax.block_until_ready(metrics)
    torch_step(i)
  times = {"jax": [], "torch": []}
  for r in range(rounds):
    start = time.perf_counter()
    for i in range(steps):
      state, metrics = jax_step(state, r * steps + i)
    jax.block_until_ready((state, metrics))
    times["jax"].append((time.perf_counter() - start) / steps)
    start = time.perf_counter()
    for i in range(steps):
      torch_step(r * steps + i).item()
    times["torch"].append((time.perf_counter() - start) / steps)
  return times, state


def peak_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a large float32 matmul in XLA on this CPU (the best of `repeats`)."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = min(_timed(lambda: matmul(a).block_until_ready()) for _ in range(repeats))
  return 2 * size**3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def summary(times: dict[str, list[float]], flops: float | None, peak: float) -> dict:
  jax_s, torch_s = statistics.median(times["jax"]), statistics.median(times["torch"])
  return {
    "jax_seconds_per_step": jax_s,
    "torch_seconds_per_step": torch_s,
    "torch_over_jax": torch_s / jax_s,
    # Each round runs the same batches in both frameworks: the median of the rounds' own
    # ratios is steadier than the ratio of medians when rounds differ (batch lengths, noise).
    "torch_over_jax_by_round": statistics.median(t / j for j, t in zip(times["jax"], times["torch"])),
    "rounds": times,
    "flops_per_step": flops,
    "fraction_of_peak": {"jax": flops / jax_s / peak, "torch": flops / torch_s / peak} if flops else None,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "peer_torch_cpu.json"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5, help="steps per round and framework")
  args = parser.parse_args()
  if os.path.exists(args.out):  # a record is never rewritten: each run keeps its own file
    sys.exit(f"error: {args.out} exists (a finished benchmark's record): pass another --out")
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  peak = peak_matmul_flops()
  print(f"peak float32 matmul (XLA, 2048x2048): {peak / 1e9:.1f} GFLOP/s", flush=True)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8 * RESNET_BATCH, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 8 * RESNET_BATCH).astype(np.int32)
  results = {}
  jax_step, state, flops = jax_resnet(images, labels, 8)
  for layout in ("nchw", "channels_last"):
    torch_step = torch_resnet(images, labels, channels_last=layout == "channels_last")
    times, state = alternate(jax_step, state, torch_step, rounds=args.rounds, steps=args.steps)
    results[f"resnet_{layout}"] = summary(times, flops, peak)
    print(f"resnet (torch {layout}): {_line(results[f'resnet_{layout}'])}", flush=True)
  results["resnet"] = min(
    (results["resnet_nchw"], results["resnet_channels_last"]), key=lambda r: r["torch_seconds_per_step"]
  )
  batches, vocab_size = stsb_batches(args.rounds * args.steps)  # each step its own batch
  jax_step, state, flops, model = jax_lstm(batches, vocab_size)
  torch_step = torch_lstm(batches, vocab_size)
  times, _ = alternate(
    jax_step, state, torch_step, rounds=args.rounds, steps=args.steps, warmup=len(batches)
  )  # every bucket length once
  results["lstm"] = summary(times, flops, peak)
  results["lstm"]["model"] = model
  print(f"lstm: {_line(results['lstm'])}", flush=True)
  record = {
    **run_records.provenance("python benchmarks/peer_torch.py " + " ".join(sys.argv[1:])),
    "results": results,
    "peak_matmul_flops_per_second": peak,
    "threads": {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count()},
    "torch_version": torch.__version__,
    "cpu_flags": run_records.cpu_flags(),
  }
  run_records.write_json(args.out, record)
  print(f"written: {args.out}")


def _line(result: dict) -> str:
  return (
    f"jax {result['jax_seconds_per_step'] * 1e3:.0f} ms/step, torch {result['torch_seconds_per_step'] * 1e3:.0f} "
    f"ms/step, torch/jax {result['torch_over_jax']:.2f}"
  )


if __name__ == "__main__":
  main()
