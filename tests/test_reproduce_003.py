"""Reproduction 003 (deliberative explanations): its claims come from the numbers (hand-built summaries)."""
from saliencylab.bench.reproduce_003 import ROWS_003, SUBSET_ROWS_003, claims_003


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


def test_reproduce_003_end_to_end_on_a_tiny_set(tmp_path):
    import torch

    from saliencylab.bench.reproduce_003 import ROWS_003, SUBSET_ROWS_003, reproduce_003
    from saliencylab.data.synthetic_ambiguity import AmbiguityConfig

    threads = torch.get_num_threads()
    results = reproduce_003(tmp_path, config=None, device=torch.device("cpu"), epochs=1, hardness_epochs=1, images=12,
                            seeds=(0,), data=AmbiguityConfig(image_size=32, train=60, test=20, classes=6),
                            sets=("birds",), batch_size=16, progress=False)
    assert torch.get_num_threads() == threads  # the reproduction's one thread is given back
    rows = results["summary"]["birds"]
    assert set(rows) == {*ROWS_003, *SUBSET_ROWS_003}
    # 12 hardest images explained: their first 50 are all 12, so the subset rows equal the full ones
    for attribution in ("gradient", "second_order"):
        assert rows[f"hardness+{attribution}@50"]["runs"] == rows[f"hardness+{attribution}"]["runs"]
    rejection = results["details"]["birds"]["test_rejection_auc"]
    assert set(rejection) == {"confidence", "entropy", "hardness"}
    assert all(len(v) == 1 and 0 <= v[0] <= 98 for v in rejection.values())
