"""Serving path: PyTorch mirror of the inference model, weight conversion, ONNX export.

Needs the `serve` extra (torch, onnx, onnxruntime, safetensors); importing this package
alone does not import torch.
"""
