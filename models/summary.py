"""Print the model table of the README: parameters and FLOPs of every registered model at its nominal input.

``python -m models.summary`` prints a markdown table. FLOPs are counted by ``torch.utils.flop_counter``'s
``FlopCounterMode`` for one image (batch 1, eval mode): 2 FLOPs per multiply-accumulate of convolutions,
transposed convolutions, matrix products and attention ``bmm``s; element-wise work (activations, BatchNorm,
softmax, pooling, resizing) is not counted. ``FlopCounterMode`` has no formula for LSTMs, so ReNet's LSTMs are
counted here (2 × the weight-matrix sizes × the time steps × the sequences).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import build_model, list_models, model_paper


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of one registered model.

    Attributes:
        name: registry name.
        paper: the paper it implements.
        input_size: nominal square input side.
        parameters: number of parameters.
        flops: FLOPs for one image at ``input_size`` (2 × multiply-accumulates).
    """

    name: str
    paper: str
    input_size: int
    parameters: int
    flops: int


def lstm_flops(
    input_shape: Sequence[int], hx: object, params: Sequence[Sequence[int]], *args: object, **kwargs: object
) -> int:
    """FLOPs of ``aten.lstm``: every weight matrix (input-hidden and hidden-hidden, each layer and direction) is
    applied once per time step and sequence: ``2 * rows * cols * steps * batch``."""
    steps_times_batch = math.prod(input_shape[:-1])
    return sum(2 * shape[0] * shape[1] * steps_times_batch for shape in params if len(shape) == 2)


def mkldnn_lstm_layer_flops(
    input_shape: Sequence[int], weight_ih: Sequence[int], weight_hh: Sequence[int], *args: object, **kwargs: object
) -> int:
    """FLOPs of ``aten.mkldnn_rnn_layer`` (one layer, one direction of a CPU LSTM), as :func:`lstm_flops`."""
    steps_times_batch = math.prod(input_shape[:-1])
    return 2 * (math.prod(weight_ih) + math.prod(weight_hh)) * steps_times_batch


# CPU LSTMs run as one oneDNN kernel per layer and direction, or as aten.lstm where oneDNN is unavailable.
_RNN_FLOPS = {torch.ops.aten.lstm: lstm_flops, torch.ops.aten.mkldnn_rnn_layer: mkldnn_lstm_layer_flops}


def measure(name: str) -> ModelCost:
    """Parameters and FLOPs of the registered model ``name`` at its nominal input size."""
    model = build_model(name).eval()
    size = int(model.input_size)
    counter = FlopCounterMode(display=False, custom_mapping=_RNN_FLOPS)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, size, size))
    parameters = sum(p.numel() for p in model.parameters())
    return ModelCost(name, model_paper(name), size, parameters, counter.get_total_flops())


def markdown_table(costs: Sequence[ModelCost]) -> str:
    """The README table: one row per model."""
    lines = [
        "| model | paper | input | parameters | GFLOPs (2 × MACs) |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| `{c.name}` | {c.paper} | {c.input_size}×{c.input_size} | {c.parameters / 1e6:.2f} M | {c.flops / 1e9:.2f} |"
        for c in costs
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="registry names (default: all)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(markdown_table([measure(name) for name in (args.models or list_models())]))


if __name__ == "__main__":
    main()
