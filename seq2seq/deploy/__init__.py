"""Deployment: ONNX export, int8 quantization, and the torch-free runtime (`deploy.runtime` imports
nothing from the torch side; keep this file free of imports).
"""
