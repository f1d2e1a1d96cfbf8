"""How much of the heart a served image keeps: a plain centre crop to `image_size` against a field of view resampled
to it (`magnitude.resample_view`), over a labelled magnitude folder. Prints a table.

  python benchmarks/field_of_view.py --folder=../shared/data/acdc_train70 --sizes=64,128 --fovs=0,128,144,160,192

`kept` is the served heart area in source pixels (served heart pixels x (F / image_size)^2) over the source's heart
pixels, summed over every labelled slice; `in window` counts only the source heart pixels inside the F x F square
(what the crop alone loses); `worst slice` is the smallest per-slice `kept` among slices with a heart.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from segrecon_jax.data import magnitude
from segrecon_jax.data import ocmr


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--folder', required=True)
  parser.add_argument('--sizes', default='64,128')
  parser.add_argument('--fovs', default='0,160')
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(',')]
  fovs = [int(f) for f in args.fovs.split(',')]
  labels = []
  for image_path, label_path in magnitude.find_pairs(args.folder):
    _, label, labelled = magnitude.read_pair(image_path, label_path)
    labels += [label[s, t] for s, t in np.argwhere(labelled)]
  print(f'{args.folder}: {len(labels)} labelled slices, {sum(int((l > 0).sum()) for l in labels)} heart pixels')
  print('| image_size | field_of_view | source pixels per served pixel | kept | in window | worst slice |')
  print('|---|---|---|---|---|---|')
  for size in sizes:
    for fov in fovs:
      source = served = window = 0.0
      worst = 1.0
      for label in labels:
        heart = (label > 0).sum()
        if fov:
          out = (magnitude.resample_view(label, (size, size), fov, is_label=True) > 0).sum() * (fov / size) ** 2
          inside = (ocmr.crop_or_pad(label, (fov, fov)) > 0).sum()
        else:
          out = inside = (ocmr.crop_or_pad(label, (size, size)) > 0).sum()
        source, served, window = source + heart, served + out, window + inside
        if heart:
          worst = min(worst, out / heart)
      step = f'{fov / size:.2f}' if fov else '1 (crop)'
      print(f'| {size} | {fov or "0 (crop)"} | {step} | {served / source:.2%} | {window / source:.2%} | {worst:.1%} |')


if __name__ == '__main__':
  main()
