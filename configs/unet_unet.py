"""Segmentation-aware reconstruction with two U-Nets, UNet -> UNet (Table 1), trained end to end.

  python main.py --config=configs/unet_unet.py:x8 --workdir=/tmp/segrecon/unet_unet_x8
  python main.py --config=configs/unet_unet.py:x8_stab --workdir=/tmp/segrecon/unet_unet_x8_stab
Presets: x4, x8, x4_stab, x8_stab ("(S)" rows); switch `runlocal` for a CPU smoke run.
"""

import ml_collections

from configs import default


def get_config(arg=None):
  config, switches = default.build({}, arg)
  features = default.unet_features(switches)
  config.model = ml_collections.ConfigDict({
      'name': 'unet_unet',
      'recon': {'features': features, 'normalize': True},  # As configs/unet.py's UNet.
      'seg': {'features': features, 'out_channels': config.num_classes},
      'stop_gradient': False,  # The segmentation loss reaches the reconstruction network: the paper's point.
  })
  return config
