"""Segmentation-aware reconstruction, CascadeNet -> MANet (Table 2): the paper's flagship model.

  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=/tmp/segrecon/cascade_manet_x8_stab
  python main.py --config=configs/cascade_manet.py:x4 --workdir=/tmp/segrecon/cascade_manet_x4
Presets: x4, x8, x4_stab, x8_stab ("(S)" rows); switches `demo` (the README's main job: `:x4_stab,demo`), `runlocal`
(a CPU smoke run) and `cpu_study`; under each, CascadeNet and MANet both run at a quarter of their paper widths.
"""

import ml_collections

from configs import default


def get_config(arg=None):
  config, switches = default.build({}, arg)
  runlocal = 'runlocal' in switches
  seg = {'encoder_depth': 4, 'decoder_channels': (256, 128, 64, 32), 'num_classes': config.num_classes,
         'encoder_weights': ''}
  if runlocal:  # A quarter of every width, as CascadeNet's 16 of 64 filters; still ResNet34's (3, 4, 6) blocks.
    seg.update(encoder_widths=(16, 32, 64, 128), stem_width=16, decoder_channels=(64, 32, 16, 8), pab_channels=16)
  config.model = ml_collections.ConfigDict({
      'name': 'cascade_manet',
      'recon': {'num_cascades': 6, 'num_layers': 5, 'features': 16 if runlocal else 64},
      # The paper's MANet: ResNet34 encoder of depth 4, decoder filters (256, 128, 64, 32); see models/manet.py.
      # encoder_weights: '' = random init, which every row here uses (the ImageNet file cannot be downloaded on
      # this machine); smp's MAnet, and so most likely the paper, starts from ImageNet ResNet34 weights: pass a
      # .safetensors file with --config.model.seg.encoder_weights=PATH (README, Research use).
      'seg': seg,
      'stop_gradient': False,  # The segmentation loss reaches the reconstruction network: the paper's point.
  })
  return config
