"""Where the copies are lost: ``copy_recall``'s per-scene counts against a hand-made scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.evaluate_cosal import EvalScene, _copies_matched


def test_copies_matched_counts_each_stage_by_hand() -> None:
    # A 200×100 scene (network input 100 px: boxes scale by 2 in x, 1 in y): copies 0 and 1, distractor 2.
    scene = EvalScene(
        image=Path("unused.jpg"),
        mask=np.zeros((100, 200), dtype=bool),
        boxes=np.asarray([[0, 0, 40, 40], [100, 0, 140, 40], [0, 60, 40, 100]], dtype=np.float64),
        groups=np.asarray([0, 0, 1]),
        cosalient_group=0,
    )
    rpn = np.asarray(
        [[0, 0, 20, 40], [0, 60, 20, 100], [-10, -5, 21, 41]], dtype=np.float32
    )  # copy 0 (twice), distractor
    proposed = np.asarray([[0, 0, 20, 40], [50, 0, 70, 40]], dtype=np.float32)  # both copies
    answer = np.asarray([[100, 0, 140, 40], [0, 60, 40, 100]], dtype=np.float64)  # copy 1 and the distractor, scene px
    assert _copies_matched(scene, rpn, proposed, answer, input_size=100) == {
        "rpn_any_box": 1,
        "proposals": 2,
        "answer": 1,
    }
    nothing = np.zeros((0, 4), dtype=np.float32)
    assert _copies_matched(scene, nothing, nothing, nothing, input_size=100) == {
        "rpn_any_box": 0,
        "proposals": 0,
        "answer": 0,
    }
