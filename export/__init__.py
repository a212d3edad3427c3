"""Checkpoint → bundle: ONNX export, parity check, graph optimization, int8/fp16 variants, TensorRT, Triton, bench.

``python -m export --checkpoint PATH --out DIR`` builds a bundle (see ``export/README.md``);
``python -m export.bench --bundle NAME_OR_DIR`` measures one.
"""
