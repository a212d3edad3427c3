"""The saliency inference service: FastAPI + ONNX Runtime. Imports no torch (ARCHITECTURE.md)."""

__version__ = "1.0"
