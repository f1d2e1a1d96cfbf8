"""PyTorch reference: the time of one training step of the paper's experiments, for `benchmarks/train_step.py`'s table.

  pip install -r benchmarks/requirements-torch.txt      # a separate environment; never needed by the library
  /work/torchvenv/bin/python benchmarks/torch_reference.py --steps=3
  /work/torchvenv/bin/python benchmarks/torch_reference.py --experiments=unet,cascade --json=torch.json
  /work/torchvenv/bin/python benchmarks/torch_reference.py --device=cuda --half_precision --threads=16
  /work/torchvenv/bin/python benchmarks/torch_reference.py --image_size=32 --batch=2 --steps=1 --num_acs=4  # smoke
  python3 benchmarks/torch_reference.py --device=cuda --modes=eager,compile --tf32=on --batch=128  # + torch.compile

What is timed, per experiment and per `--modes` entry: one training step, as `steps.train_step` runs it in JAX,
from the fully sampled complex images already on the device to the updated parameters; 'eager' runs the model
eagerly, 'compile' runs `torch.compile(model, mode=--compile_mode)` (forward and backward through TorchDynamo and
Inductor; the masks, FFTs, losses and Adam stay eager in both modes), each mode on a freshly built model:
  1. masks: one random Cartesian phase-encode mask per example, drawn on the device inside the step (as our JAX step
     does): the `--num_acs` central lines plus `round(W / R) - num_acs` lines drawn without replacement
     (`torch.multinomial`) from our `mri.mask_density` (a Gaussian of std W / 10 plus a floor of 1 / (2R));
  2. inputs: centred orthonormal `fft2c`, the mask, `ifft2c`: the zero-filled image as 2 channels (real, imaginary);
  3. forward in train mode (BatchNorm uses and updates batch statistics; under `--half_precision` the networks run
     in a bfloat16 autocast while the FFTs, the data consistency, the magnitude and the losses stay float32);
  4. the loss of `steps.compute_losses`: `mean|e| + mean e^2` over the (real, imaginary) channels of the error
     `e = recon - image` (losses.l1_l2_loss, weights 1), plus for joint models the generalized Dice loss of
     losses.generalized_dice_loss on the softmax of the segmentation logits (weight 1);
  5. backward and `torch.optim.Adam(lr=1e-4, betas=(0.99, 0.999), eps=1e-8)` (configs/default.py), PyTorch's
     default (foreach) implementation.
Not timed: building the model and optimizer, the synthetic batch (the phantom of `benchmarks/train_step.py`) and one
warm-up step (which compiles under 'compile'; its seconds are reported as `first_step_s`). The `--steps` timed
steps report median, min and max seconds; with `--device=cuda` the device is synchronized before and after each
step (cuDNN autotuning on, so the warm-up step also picks the kernels). `--tf32=on|off` sets both of PyTorch's
TF32 switches (`torch.backends.cuda.matmul.allow_tf32`, `torch.backends.cudnn.allow_tf32`; PyTorch's own default
is TF32 for convolutions only), to match `benchmarks/train_step.py --tf32` on the JAX side; on
the CPU, OpenMP waits passively unless OMP_WAIT_POLICY is set (see below the imports). Unlike
our JAX step, there is no finite-loss guard per step (the loss is checked once at the end) and no gradient norm.

The models, NCHW, each a PyTorch counterpart of `configs/<experiment>.py` at paper widths:
  unet               x + fastMRI Unet(in_chans=2, out_chans=2, chans=32, num_pool_layers=3): our residual UNetRecon.
  multidecoder_unet  one fastMRI-style encoder (ConvBlock 2->32->64->128, bottleneck 256) and two decoders
                     (TransposeConvBlock + ConvBlock per level, 1x1 head): x + recon decoder, 4-class seg decoder.
  unet_unet          the unet above -> magnitude -> fastMRI Unet(in_chans=1, out_chans=4, chans=32, 3 pools).
  cascade            benchmarks/make_golden.py's DnCn: 6 cascades x 5 convs x 64 filters, hard data consistency.
  cascade_manet      that DnCn -> magnitude -> smp MAnet('resnet34', encoder_depth=4,
                     decoder_channels=(256, 128, 64, 32), in_channels=1, classes=4), random init.
The magnitude is our `safe_magnitude`, `sqrt(re^2 + im^2 + 1e-12)`. fastMRI's blocks differ from our U-Net's in
ways that cost about the same arithmetic: InstanceNorm (no affine) instead of BatchNorm, LeakyReLU(0.2) instead of
ReLU, average instead of max pooling, and an up-convolution without bias followed by InstanceNorm and LeakyReLU;
so their parameter counts are lower than ours by the BatchNorm scales and shifts and the up-convolution biases.
smp builds ResNet34's fourth stage although depth 4 never runs it; it is dropped here, so the MAnet side holds the
12,385,892 parameters our MANet does. The table prints every model's parameter count; here against ours:
  unet 1,923,714 / 1,926,754, multidecoder_unet 2,676,486 / 2,680,646, unet_unet 3,847,206 / 3,853,286,
  cascade 678,924 / 678,924, cascade_manet 13,064,816 / 13,064,816 (678,924 + 12,385,892).
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

# OpenMP threads that spin while they wait take the cores of other processes: on this 2-core machine, shared with a
# test run, 2 spinning threads made the cascade step 11x slower (3.0 s against 0.27 s passive, 0.26 s on 1 thread).
# Passive waiting is the default here; export OMP_WAIT_POLICY=ACTIVE to time PyTorch's own default on an idle host.
# It must be set before torch starts its OpenMP runtime.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import torch
from torch import nn
import fastmri.models
from fastmri.models import unet as fastmri_unet
import segmentation_models_pytorch as smp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden  # DnCn and its centred FFTs.
# pylint: enable=g-import-not-at-top,wrong-import-position

EXPERIMENTS = ('unet', 'multidecoder_unet', 'unet_unet', 'cascade', 'cascade_manet')
SEGMENTS = {'unet': False, 'multidecoder_unet': True, 'unet_unet': True, 'cascade': False, 'cascade_manet': True}
NUM_CLASSES = 4  # configs/default.py: background, LV blood pool, LV myocardium, RV blood pool.
UNET_CHANS, UNET_POOLS = 32, 3  # Our features (32, 64, 128, 256): four levels, three poolings.
MAGNITUDE_EPSILON = 1e-12  # models/segrecon.py: a finite gradient of the magnitude at 0.
DICE_EPSILON = 1e-5  # losses.generalized_dice_loss's default.
LEARNING_RATE, BETAS = 1e-4, (0.99, 0.999)  # configs/default.py (paper section 2.4).
MODES = ('eager', 'compile')  # How the step's model runs: eagerly, or through torch.compile.
TF32_CHOICES = ('default', 'on', 'off')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--experiments', default=','.join(EXPERIMENTS),
                      help=f'comma-separated experiments, of {EXPERIMENTS}')
  parser.add_argument('--image_size', type=int, default=128, help='square image side H = W')
  parser.add_argument('--batch', type=int, default=16, help='batch (the paper: 16)')
  parser.add_argument('--steps', type=int, default=3, help='timed steps after one warm-up step')
  parser.add_argument('--threads', type=int, default=2, help='torch intra-op and inter-op threads')
  parser.add_argument('--acceleration', type=int, default=8, help='R: each mask keeps round(W / R) lines')
  parser.add_argument('--num_acs', type=int, default=8, help='central autocalibration lines of every mask')
  parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'), help='where the step runs')
  parser.add_argument('--half_precision', action='store_true', help='bfloat16 autocast of the networks')
  parser.add_argument('--seed', type=int, default=0, help='seeds the weights and the masks')
  parser.add_argument('--modes', default='eager',
                      help="comma-separated step modes timed one after the other, of 'eager', 'compile'")
  parser.add_argument('--compile_mode', default='default',
                      help="torch.compile mode under --modes=compile ('default', 'reduce-overhead', 'max-autotune')")
  parser.add_argument('--tf32', default='default', choices=TF32_CHOICES,
                      help="TF32 for float32 matmuls and convolutions on a GPU: 'on', 'off' or PyTorch's 'default'")
  parser.add_argument('--json', default='', help='also write the results as JSON to this path')
  return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Models: every one is called as model(zero_filled [B, 2, H, W], kspace complex [B, H, W], mask bool [B, 1, W]) and
# returns (recon float32 [B, 2, H, W], seg_logits [B, C, H, W] or None).


class ResidualUnet(nn.Module):
  """fastMRI's U-Net as our `UNetRecon`: a correction added to the zero-filled (real, imaginary) channels."""

  def __init__(self):
    super().__init__()
    self.unet = fastmri.models.Unet(in_chans=2, out_chans=2, chans=UNET_CHANS, num_pool_layers=UNET_POOLS,
                                    drop_prob=0.0)

  def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    del kspace, mask  # An image-domain network.
    return x + self.unet(x).float()


class UnetEncoder(nn.Module):
  """The contracting path of fastMRI's Unet: a ConvBlock per level, average pooling, a ConvBlock bottleneck."""

  def __init__(self, in_chans: int, chans: int = UNET_CHANS, num_pool_layers: int = UNET_POOLS):
    super().__init__()
    widths = [chans * 2**level for level in range(num_pool_layers)]
    self.levels = nn.ModuleList(fastmri_unet.ConvBlock(a, b, 0.0) for a, b in zip([in_chans] + widths, widths))
    self.bottleneck = fastmri_unet.ConvBlock(widths[-1], 2 * widths[-1], 0.0)

  def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    skips = []
    for level in self.levels:
      x = level(x)
      skips.append(x)
      x = nn.functional.avg_pool2d(x, kernel_size=2, stride=2)
    return self.bottleneck(x), skips


class UnetDecoder(nn.Module):
  """The expanding path of fastMRI's Unet: per level (deepest first) a TransposeConvBlock halving the channels, the
  encoder skip concatenated, a ConvBlock; then a 1x1 convolution (with bias) to `out_chans`."""

  def __init__(self, out_chans: int, chans: int = UNET_CHANS, num_pool_layers: int = UNET_POOLS):
    super().__init__()
    widths = [chans * 2**level for level in reversed(range(num_pool_layers))]
    self.up = nn.ModuleList(fastmri_unet.TransposeConvBlock(2 * w, w) for w in widths)
    self.convs = nn.ModuleList(fastmri_unet.ConvBlock(2 * w, w, 0.0) for w in widths)
    self.head = nn.Conv2d(chans, out_chans, kernel_size=1)

  def forward(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
    for up, conv, skip in zip(self.up, self.convs, reversed(skips)):
      x = conv(torch.cat([up(x), skip], dim=1))
    return self.head(x)


class MultiDecoderUnet(nn.Module):
  """Our `MultiDecoderUNet` from fastMRI's blocks: a shared encoder, a residual recon decoder and a seg decoder."""

  def __init__(self, num_classes: int = NUM_CLASSES):
    super().__init__()
    self.encoder = UnetEncoder(in_chans=2)
    self.recon_decoder = UnetDecoder(out_chans=2)
    self.seg_decoder = UnetDecoder(out_chans=num_classes)

  def forward(self, x: torch.Tensor, kspace: torch.Tensor,
              mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    del kspace, mask
    bottleneck, skips = self.encoder(x)
    recon = x + self.recon_decoder(bottleneck, skips).float()
    return recon, self.seg_decoder(bottleneck, skips)


class ReconOnly(nn.Module):
  """A solo reconstruction network with the joint models' output: (recon, None)."""

  def __init__(self, net: nn.Module):
    super().__init__()
    self.net = net

  def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, None]:
    return self.net(x, kspace, mask).float(), None


class SegRecon(nn.Module):
  """Our `SegRecon`: `seg_net` on the magnitude of `recon_net`'s output, trained end to end (no stop-gradient)."""

  def __init__(self, recon_net: nn.Module, seg_net: nn.Module):
    super().__init__()
    self.recon_net = recon_net
    self.seg_net = seg_net

  def forward(self, x: torch.Tensor, kspace: torch.Tensor,
              mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    recon = self.recon_net(x, kspace, mask).float()
    magnitude = torch.sqrt(torch.sum(torch.square(recon), dim=1, keepdim=True) + MAGNITUDE_EPSILON)
    return recon, self.seg_net(magnitude)


def paper_manet() -> nn.Module:
  """smp's MAnet at the paper's layout, without the fourth ResNet34 stage that `encoder_depth=4` never runs."""
  model = smp.MAnet('resnet34', encoder_weights=None, in_channels=1, classes=NUM_CLASSES, encoder_depth=4,
                    decoder_channels=(256, 128, 64, 32))
  del model.encoder.layer4
  return model


def seg_unet() -> nn.Module:
  return fastmri.models.Unet(in_chans=1, out_chans=NUM_CLASSES, chans=UNET_CHANS, num_pool_layers=UNET_POOLS,
                             drop_prob=0.0)


BUILDERS: Dict[str, Callable[[], nn.Module]] = {
    'unet': lambda: ReconOnly(ResidualUnet()),
    'multidecoder_unet': MultiDecoderUnet,
    'unet_unet': lambda: SegRecon(ResidualUnet(), seg_unet()),
    'cascade': lambda: ReconOnly(make_golden.DnCn(num_cascades=6, num_layers=5, features=64)),
    'cascade_manet': lambda: SegRecon(make_golden.DnCn(num_cascades=6, num_layers=5, features=64), paper_manet()),
}


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def param_summary(model: nn.Module) -> str:
  """'total' or, for SegRecon, 'total (recon + seg)'."""
  total = count_params(model)
  if isinstance(model, SegRecon):
    return f'{total:,} ({count_params(model.recon_net):,} + {count_params(model.seg_net):,})'
  return f'{total:,}'


# ---------------------------------------------------------------------------------------------------------------
# Masks, inputs, losses (torch counterparts of segrecon_jax.mri, steps and losses).


def num_sampled_lines(num_cols: int, acceleration: int) -> int:
  return int(round(num_cols / acceleration))


def mask_density(num_cols: int, acceleration: int, num_acs: int) -> np.ndarray:
  """Our `mri.mask_density`: Gaussian (std W / 10) around k = 0 plus a floor of 1 / (2R), zero on the ACS lines."""
  offsets = np.arange(num_cols) - num_cols // 2
  density = np.exp(-0.5 * np.square(offsets / (num_cols / 10.0))) + 0.5 / acceleration
  first_acs = num_cols // 2 - num_acs // 2
  density[first_acs:first_acs + num_acs] = 0.0
  return density / density.sum()


class MaskSampler:
  """Draws per-example masks bool `[B, 1, W]` on the device, as `mri.sample_mask` (a different random stream)."""

  def __init__(self, num_cols: int, acceleration: int, num_acs: int, device: torch.device, seed: int):
    kept = num_sampled_lines(num_cols, acceleration)
    if kept < num_acs:
      raise ValueError(f'--acceleration={acceleration} keeps {kept} of the {num_cols} lines of --image_size='
                       f'{num_cols}, fewer than --num_acs={num_acs} autocalibration lines: lower --num_acs or use '
                       'larger images')
    self.num_random = kept - num_acs
    self.density = torch.tensor(mask_density(num_cols, acceleration, num_acs), dtype=torch.float32, device=device)
    first_acs = num_cols // 2 - num_acs // 2
    self.acs = torch.zeros(num_cols, dtype=torch.bool, device=device)
    self.acs[first_acs:first_acs + num_acs] = True
    self.generator = torch.Generator(device=device).manual_seed(seed)

  def __call__(self, batch: int) -> torch.Tensor:
    masks = self.acs.expand(batch, -1).clone()
    if self.num_random:
      lines = torch.multinomial(self.density.expand(batch, -1), self.num_random, replacement=False,
                                generator=self.generator)
      masks.scatter_(1, lines, True)
    return masks[:, None, :]


def to_channels(x: torch.Tensor) -> torch.Tensor:
  """Complex `[B, H, W]` -> float `[B, 2, H, W]` (real, imaginary)."""
  return torch.stack([x.real, x.imag], dim=1)


def l1_l2_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  """Our `losses.l1_l2_loss` (weights 1) averaged over the batch: every example has as many pixels, so the mean of
  the per-example means is the mean over everything."""
  error = recon.float() - target
  return torch.mean(torch.abs(error)) + torch.mean(torch.square(error))


def generalized_dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = NUM_CLASSES,
                          eps: float = DICE_EPSILON) -> torch.Tensor:
  """Our `losses.generalized_dice_loss` averaged over the batch: per-example weights `1 / volume^2`, the largest
  present weight for absent classes, no gradient through the weights.

  Args:
    logits: float `[B, C, H, W]`.
    labels: int64 `[B, H, W]`.
  """
  probs = torch.softmax(logits.float(), dim=1)
  onehot = nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
  intersection = torch.sum(onehot * probs, dim=(2, 3))  # [B, C]
  label_volume = torch.sum(onehot, dim=(2, 3))
  pred_volume = torch.sum(probs, dim=(2, 3))
  present = label_volume > 0
  weights = torch.where(present, 1.0 / torch.square(torch.where(present, label_volume, 1.0)), 0.0)
  weights = torch.where(present, weights, weights.amax(dim=1, keepdim=True)).detach()
  numerator = 2.0 * torch.sum(weights * intersection, dim=1) + eps
  denominator = torch.sum(weights * (label_volume + pred_volume), dim=1) + eps
  return torch.mean(1.0 - numerator / denominator)


def synthetic_batch(batch: int, size: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """`benchmarks/train_step.py synthetic_batch`'s phantom: a cone of random phase per example, a disc of labels 1
  inside a ring of labels 2. Returns (complex64 `[B, H, W]`, int64 `[B, H, W]`)."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[:size, :size] / size - 0.5
  radius = np.hypot(rows, cols)
  cone = np.clip(1.0 - 2.0 * radius, 0.0, 1.0)
  images = np.stack([cone * np.exp(1j * rng.uniform(-1, 1)) for _ in range(batch)]).astype(np.complex64)
  labels = np.where(radius < 0.1, 1, np.where(radius < 0.15, 2, 0))
  return images, np.broadcast_to(labels, (batch, size, size)).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# The step and its timing.


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, sample_masks: MaskSampler, segments: bool,
                    device: torch.device, half_precision: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """`step(image complex64 [B, H, W], labels int64 [B, H, W])`: masks, inputs, forward, loss, backward, Adam.

  Returns the loss as a tensor (reading it would synchronize the device; the caller decides when).
  """

  def step(image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    masks = sample_masks(image.shape[0])
    measured = make_golden._fft2c(image) * masks  # pylint: disable=protected-access
    zero_filled = to_channels(make_golden._ifft2c(measured))  # pylint: disable=protected-access
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=half_precision):
      recon, seg_logits = model(zero_filled, measured, masks)
    loss = l1_l2_loss(recon, to_channels(image))
    if segments:
      loss = loss + generalized_dice_loss(seg_logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def synchronize(device: torch.device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def time_experiment(experiment: str, args: argparse.Namespace, device: torch.device,
                    mode: str = 'eager') -> Dict[str, Any]:
  """Builds the experiment's model and optimizer, runs one warm-up step and `args.steps` timed steps; `mode`
  'compile' runs the model through `torch.compile(mode=args.compile_mode)`."""
  torch.manual_seed(args.seed)
  model = BUILDERS[experiment]().to(device).train()
  factor = 2**UNET_POOLS
  if args.image_size % factor:
    raise ValueError(f'--image_size={args.image_size}: the U-Nets need a multiple of {factor}')
  optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=BETAS)
  sample_masks = MaskSampler(args.image_size, args.acceleration, args.num_acs, device, args.seed)
  run_model = torch.compile(model, mode=args.compile_mode) if mode == 'compile' else model  # Shares the parameters.
  step = make_train_step(run_model, optimizer, sample_masks, SEGMENTS[experiment], device, args.half_precision)
  images, labels = synthetic_batch(args.batch, args.image_size, args.seed)
  image, label = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)

  synchronize(device)
  start = time.perf_counter()
  loss = step(image, label)  # Warm-up: compilation (mode 'compile'), allocator, cuDNN autotuning, Adam's state.
  synchronize(device)
  first_step = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    synchronize(device)
    start = time.perf_counter()
    loss = step(image, label)
    synchronize(device)
    times.append(time.perf_counter() - start)
  if not torch.isfinite(loss):
    raise FloatingPointError(f'{experiment}: non-finite loss {float(loss)} in the benchmark step')
  return {'experiment': experiment, 'mode': mode, 'step_s_median': float(np.median(times)),
          'step_s_min': float(min(times)), 'step_s_max': float(max(times)), 'first_step_s': first_step,
          'params': count_params(model), 'params_detail': param_summary(model), 'loss': float(loss)}


def format_table(rows: List[Dict[str, Any]], batch: int) -> str:
  lines = ['| experiment | mode | params | first step s | step s (med) | min | max | slices/s |',
           '|---|---|---|---|---|---|---|---|']
  for row in rows:
    if 'error' in row:
      lines.append(f'| {row["experiment"]} | {row["mode"]} | failed: {row["error"][:120]} | - | - | - | - | - |')
      continue
    lines.append(f'| {row["experiment"]} | {row["mode"]} | {row["params_detail"]} | {row["first_step_s"]:.1f} | '
                 f'{row["step_s_median"]:.4f} | {row["step_s_min"]:.4f} | {row["step_s_max"]:.4f} | '
                 f'{batch / row["step_s_median"]:.1f} |')
  return '\n'.join(lines)


def set_tf32(tf32: str) -> Dict[str, bool]:
  """Sets PyTorch's two TF32 switches ('on' / 'off'; 'default' leaves them) and returns their values."""
  if tf32 != 'default':
    torch.backends.cuda.matmul.allow_tf32 = tf32 == 'on'
    torch.backends.cudnn.allow_tf32 = tf32 == 'on'
  return {'matmul_allow_tf32': bool(torch.backends.cuda.matmul.allow_tf32),
          'cudnn_allow_tf32': bool(torch.backends.cudnn.allow_tf32)}


def run(args: argparse.Namespace) -> Dict[str, Any]:
  experiments = [e.strip() for e in args.experiments.split(',') if e.strip()]
  unknown = sorted(set(experiments) - set(EXPERIMENTS))
  if unknown or not experiments:
    raise ValueError(f'--experiments: unknown {unknown}; valid are {list(EXPERIMENTS)}')
  if args.steps < 1:
    raise ValueError(f'--steps={args.steps}: time at least one step')
  modes = [m.strip() for m in args.modes.split(',') if m.strip()]
  if not modes or sorted(set(modes) - set(MODES)):
    raise ValueError(f'--modes={args.modes!r}: valid modes are {list(MODES)}')
  torch.set_num_threads(args.threads)
  torch.set_num_interop_threads(args.threads)  # Only possible before the first inter-op parallel work.
  if args.device == 'cuda':
    if not torch.cuda.is_available():
      raise RuntimeError('--device=cuda but torch sees no CUDA device')
    torch.backends.cudnn.benchmark = True  # Fixed shapes: let cuDNN pick its fastest kernels in the warm-up step.
  device = torch.device(args.device)
  device_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
  tf32 = set_tf32(args.tf32)
  print(f'PyTorch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}) on '
        f'{device_name}, {args.threads} threads (OMP_WAIT_POLICY={os.environ["OMP_WAIT_POLICY"]}); image '
        f'{args.image_size}x{args.image_size}, batch {args.batch}, x{args.acceleration} with {args.num_acs} ACS '
        f'lines, {"bfloat16 autocast" if args.half_precision else "float32"}, TF32 {args.tf32} ({tf32}); modes '
        f'{modes} (torch.compile mode {args.compile_mode!r}).', flush=True)
  result = {'torch_version': torch.__version__, 'cuda_version': torch.version.cuda,
            'cudnn_version': torch.backends.cudnn.version(), 'threads': args.threads, 'device': args.device,
            'device_name': device_name, 'omp_wait_policy': os.environ['OMP_WAIT_POLICY'],
            'image_size': args.image_size, 'batch': args.batch, 'acceleration': args.acceleration,
            'num_acs': args.num_acs, 'half_precision': args.half_precision, 'steps': args.steps, 'tf32': args.tf32,
            **tf32, 'modes': modes, 'compile_mode': args.compile_mode, 'rows': []}
  for mode in modes:
    for experiment in experiments:
      try:
        row = time_experiment(experiment, args, device, mode)
      except Exception as e:  # pylint: disable=broad-except  (a failed compile leaves the other rows standing)
        if mode == 'eager':
          raise
        row = {'experiment': experiment, 'mode': mode, 'error': f'{type(e).__name__}: {e}'}
        print(f'{experiment} ({mode}): failed: {row["error"]}', flush=True)
      else:
        print(f'{experiment} ({mode}): {row["params_detail"]} params, first step {row["first_step_s"]:.1f} s, '
              f'step {row["step_s_median"]:.4f} s (min {row["step_s_min"]:.4f}, max {row["step_s_max"]:.4f})',
              flush=True)
      result['rows'].append(row)
      if args.json:  # After every row, so a run stopped by a time limit keeps what it measured.
        with open(args.json, 'w') as f:
          json.dump(result, f, indent=2)
  print()
  print(format_table(result['rows'], args.batch))
  return result


def main(argv: Optional[List[str]] = None) -> None:
  run(parse_args(argv))


if __name__ == '__main__':
  main(sys.argv[1:])
