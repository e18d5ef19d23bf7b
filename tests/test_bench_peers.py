"""``bench peers`` (our methods beside Captum / pytorch-grad-cam / TorchRay) and the interleaving it shares with ``bench speed``."""
import json
import math
import os
import time

import pytest
import torch

from saliencylab.bench.peers import pearson
from saliencylab.bench.speed import interleaved, peak_memory, ratio_spread
from saliencylab.cli import main


def test_interleaved_calls_every_entry_once_per_round_reversing_every_other_round():
    order = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, torch.device("cpu"), 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert list(times) == ["a", "b"] and all(len(t) == 3 and min(t) >= 0 for t in times.values())


def test_ratio_spread_is_median_lowest_highest_of_per_round_ratios():
    assert ratio_spread([2.0, 4.0, 6.0], [1.0, 1.0, 2.0]) == (3.0, 2.0, 4.0)
    assert all(math.isnan(v) for v in ratio_spread([1.0, 1.0, 1.0], [1.0, 0.0, 1.0]))


def test_pearson_is_the_lowest_per_image_correlation():
    first = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 0.0], [0.0, 1.0]]])
    second = torch.stack([2 * first[0] + 1, -first[1]])
    assert pearson(first, second) == pytest.approx(-1.0)
    assert pearson(first[:1], second[:1]) == pytest.approx(1.0)


def test_bench_peers_rows_and_agreement(tmp_path, capsys):
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("torchray")
    pytest.importorskip("captum")
    out = tmp_path / "peers.json"
    assert main(["bench", "peers", "--model", "small_cnn", "--size", "32", "--batch", "2", "--methods", "gradcam",
                 "gradient", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torchcam: " in printed and "quantus: " in printed  # said whether installed, never timed
    rows = json.loads(out.read_text())
    assert [(r["method"], r["library"]) for r in rows] == [("gradcam", "pytorch-grad-cam"), ("gradcam", "torchray"),
                                                          ("gradient", "captum")]
    for row in rows:
        assert row["agreement"] > 0.9999  # the same maps: both sides did the same work
        assert row["ratio_low"] <= row["ratio"] <= row["ratio_high"]
        assert row["seconds_ours"] > 0 and row["seconds_peer"] > 0
        assert f"{row['method']:22s} {row['library']:17s}" in printed


def test_bench_peers_refuses_methods_without_a_peer_and_bad_counts(capsys):
    assert main(["bench", "peers", "--methods", "gradcam", "nope", "cam"]) == 2
    assert "no peer implementation for nope, cam" in capsys.readouterr().err
    assert main(["bench", "peers", "--repeats", "0"]) == 2
    assert "--repeats must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident size from /proc")
def test_peak_memory_on_cpu_sees_an_allocation_into_memory_freed_before():
    def hold(elements: int) -> None:  # a tensor alive for 50 ms, long enough for the 1 ms sampler
        tensor = torch.ones(elements)
        time.sleep(0.05)
        del tensor

    hold(6 * 2 ** 20)  # 24 MiB, mapped on its own; freed, it raises glibc's mmap threshold to 24 MiB
    hold(2 ** 22)  # 16 MiB, now from the heap; freed, glibc keeps it resident for reuse
    with peak_memory(torch.device("cpu")) as peak:
        hold(2 ** 22)  # without handing the freed memory back first, this read about 0
    assert peak[0] > 12
