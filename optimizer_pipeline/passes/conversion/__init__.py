"""Passes that change the runtime, not the maths: TorchScript freeze, ONNX export, OpenVINO conversion."""
