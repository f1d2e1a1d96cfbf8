"""TFDS dataset `ocmr`: `import tfds_ocmr` registers the builder (phantom, phantom_small, phantom_medium, phantom_tiny, real, nifti)."""

from tfds_ocmr.ocmr import Ocmr, OcmrConfig, OCMRManualDirError, configure, split_subjects

__all__ = ['Ocmr', 'OcmrConfig', 'OCMRManualDirError', 'configure', 'split_subjects']
