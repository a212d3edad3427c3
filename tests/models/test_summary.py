"""models.summary: LSTM FLOPs counted by hand-checked formulas; the table lists what it measured."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from models.summary import _RNN_FLOPS, ModelCost, markdown_table, measure

torch.set_num_threads(1)


def test_bidirectional_lstm_flops_match_the_weight_matrices() -> None:
    lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_RNN_FLOPS) as counter:
        lstm(torch.randn(3, 10, 8))
    # 2 directions × 30 (sequence, step) pairs × 2 FLOPs × (4H×I + 4H×H) weights.
    assert counter.get_total_flops() == 2 * 30 * 2 * (64 * 8 + 64 * 16)


def test_measure_counts_convolutions_and_renet() -> None:
    cost = measure("picanet_lite")
    assert cost.input_size == 224 and cost.paper.startswith("PiCANet")
    model = build_model("picanet_lite")
    assert cost.parameters == sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model.eval()(torch.randn(1, 3, 224, 224))
    renet = model.decoder[0].attention.renet
    # ReNet on the 14×14 map: rows then columns, 14 sequences of 14 steps each per image, two directions each.
    expected_lstm = sum(
        2 * 2 * 14 * 14 * (lstm.weight_ih_l0.numel() + lstm.weight_hh_l0.numel()) for lstm in (renet.rows, renet.cols)
    )
    assert cost.flops == plain.get_total_flops() + expected_lstm


def test_markdown_table_rows() -> None:
    table = markdown_table([ModelCost("m", "Paper (2020)", 224, 1_234_567, 2_500_000_000)])
    assert table.splitlines()[2] == "| `m` | Paper (2020) | 224×224 | 1.23 M | 2.50 |"
