"""Datasets, transforms, losses, metrics, and the train / evaluate / report commands."""
