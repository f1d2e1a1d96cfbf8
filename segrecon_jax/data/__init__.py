"""Data: the OCMR reader and the cardiac phantom that writes OCMR-format files."""
