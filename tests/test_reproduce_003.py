"""Reproduction 003 (deliberative explanations): its claims come from the numbers (hand-built summaries)."""
from saliencylab.bench.reproduce import ROWS_003, SUBSET_ROWS_003, claims_003


def _summary(values: dict[str, float]) -> dict:
    return {row: {"mean": values.get(row, 0.1), "std": 0.0, "runs": [values.get(row, 0.1)]}
            for row in (*ROWS_003, *SUBSET_ROWS_003)}


def test_claims_003_from_hand_built_means():
    birds = _summary({"hardness+second_order": 0.6, "hardness+gradient": 0.5, "confidence+second_order": 0.4,
                      "entropy+second_order": 0.65, "hardness+second_order@50": 0.7,
                      "hardness+integrated_gradients@50": 0.2, "hardness+gradient@50": 0.3})
    scenes = _summary({"hardness+second_order": 0.3, "hardness+gradient": 0.3, "hardness+second_order@50": 0.3})
    claims = {c["id"]: c for c in claims_003({"birds": birds, "scenes": scenes})}
    assert len(claims) == 8
    assert not claims["birds_hardness_beats_confidence_entropy_second_order"]["holds"]  # entropy 0.65 > 0.6
    assert claims["birds_hardness_beats_confidence_entropy_gradient"]["holds"]  # 0.5 against 0.1 and 0.1
    assert claims["birds_second_order_beats_gradient"]["holds"]
    assert claims["birds_second_order_beats_integrated_gradients"]["holds"]
    assert not claims["scenes_second_order_beats_gradient"]["holds"]  # a tie is no win
    assert claims["scenes_second_order_beats_gradient"]["ours"] == {"hardness+second_order": 0.3,
                                                                    "hardness+gradient": 0.3}
