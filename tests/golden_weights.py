"""Seeded NumPy weights shared by benchmarks/make_golden.py (PyTorch side) and tests/golden_test.py (JAX side).

NumPy only (no torch, no jax), so both sides import it. Each tensor is keyed by its PyTorch state-dict name and drawn
from its own generator seeded by (seed, crc32(name)): the values do not depend on the order in which keys are drawn.
"""

import zlib
from typing import Dict, Mapping, Sequence

import numpy as np


def golden_tensor(key: str, shape: Sequence[int], seed: int = 0) -> np.ndarray:
  """float32 tensor for the PyTorch parameter or buffer `key` of `shape` (OIHW for convolutions).

  BatchNorm statistics are deliberately far from the identity (mean +-0.2, var in [0.5, 2]) so that eval mode
  differs from train mode; convolution kernels are He-scaled so activations stay O(1) through ResNet34.
  """
  rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
  shape = tuple(shape)
  leaf = key.rsplit('.', 1)[-1]
  if leaf == 'running_mean':
    value = rng.uniform(-0.2, 0.2, shape)
  elif leaf == 'running_var':
    value = rng.uniform(0.5, 2.0, shape)
  elif leaf == 'weight' and len(shape) == 1:  # BatchNorm scale.
    value = rng.uniform(0.5, 1.5, shape)
  elif leaf == 'weight':  # Convolution kernel [O, I, kH, kW].
    fan_in = int(np.prod(shape[1:]))
    value = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
  elif leaf == 'bias':
    value = rng.uniform(-0.1, 0.1, shape)
  else:
    raise ValueError(f'golden_tensor: no rule for key {key!r}.')
  return value.astype(np.float32)


def golden_state(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> Dict[str, np.ndarray]:
  """`{key: golden_tensor(key, shape, seed)}` for every key of `shapes`."""
  return {key: golden_tensor(key, shape, seed) for key, shape in shapes.items()}


def golden_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
  """float32 standard-normal input of `shape`."""
  return np.random.default_rng([seed, 12345]).standard_normal(tuple(shape)).astype(np.float32)
