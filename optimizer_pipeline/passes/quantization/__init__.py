"""Quantization, one module per backend: torch dynamic / static / QAT, ONNX Runtime QDQ, OpenVINO NNCF."""
