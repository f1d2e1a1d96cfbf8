"""Multi-Decoder U-Net baseline (Table 1): shared encoder, a reconstruction decoder and a segmentation decoder.

  python main.py --config=configs/multidecoder_unet.py:x8 --workdir=/tmp/segrecon/mdunet_x8
  python main.py --config=configs/multidecoder_unet.py:x8_stab --workdir=/tmp/segrecon/mdunet_x8_stab
Presets: x4, x8, x4_stab, x8_stab ("(S)" rows); switch `runlocal` for a CPU smoke run.
"""

import ml_collections

from configs import default


def get_config(arg=None):
  config, switches = default.build({}, arg)
  config.model = ml_collections.ConfigDict({
      'name': 'multidecoder_unet',
      'features': default.unet_features(switches),
      'num_classes': config.num_classes,
      'normalize': True,  # Standardized input, un-standardized recon, as configs/unet.py's UNet.
  })
  return config
