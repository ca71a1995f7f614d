"""Reading and vetting an upload: the model (TorchScript), its ops against the allowlist, and the calibration batch."""
