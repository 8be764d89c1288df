"""Where models run: ONNX Runtime for deployment, PyTorch for training and reference."""
