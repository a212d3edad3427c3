"""Encoders. Each returns a list of feature maps, shallowest first, and declares ``channels`` and ``strides``."""
