"""TFDS dataset `ocmr`: `import tfds_ocmr` registers the builder (phantom*, real, nifti configs; `configure`)."""

from tfds_ocmr.ocmr import Ocmr, OcmrConfig, OCMRManualDirError, configure, split_subjects

__all__ = ['Ocmr', 'OcmrConfig', 'OCMRManualDirError', 'configure', 'split_subjects']
