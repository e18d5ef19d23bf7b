"""Scale options and two-process runs on CPU (gloo): training under DDP, explain and bench run over ranks.

The two-process runs use ``ddp_forkserver`` (saliencylab.scale.FORKSERVER): Lightning's DDP with workers forked
from a server process started once per test session; ``ddp_spawn`` and ``ddp`` import torch and Lightning
again in every worker of every run (about 12 s each on this machine), and ``ddp_fork`` hangs once the test
process has run OpenMP work.
"""
import json
import os
import signal

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from saliencylab.bench.export import explain_on_ranks, explain_to_disk, load_maps
from saliencylab.bench.run import run_benchmark, run_benchmark_on_ranks

from saliencylab.data.module import SaliencyDataModule
from saliencylab.data.synthetic import SyntheticConfig, generate
from saliencylab.models.explainer import load_trained_explainer
from saliencylab.models.load import load_trained_classifier
from saliencylab.cli import _scale, build_parser
from saliencylab.scale import Scale, _compute_then_merge
from saliencylab.training.explainer import ExplainerModule, fit_explainer
from saliencylab.types import Sample, collate

TWO = Scale(devices=2, strategy="ddp_forkserver")


@pytest.fixture(scope="module")
def splits():
    return generate(SyntheticConfig(image_size=32, train=8, val=8, test=8, seed=5))


class RecordRank(Callback):
    """Each rank writes ``rank<R>.json``: the image ids of its training batches and the val_loss it saw per epoch."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.images: list[list[str]] = []
        self.val_loss: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.images.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.images[-1] += batch.image_ids

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_loss.append(float(trainer.callback_metrics["val_loss"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        (self.folder / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"images": self.images, "val_loss": self.val_loss, "world": trainer.world_size}))


def test_scale_refuses_bad_options():
    with pytest.raises(ValueError, match="devices must be a whole number >= 1"):
        Scale(devices=0)
    with pytest.raises(ValueError, match="num_nodes"):
        Scale(num_nodes=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        Scale(precision="8")
    assert Scale(devices=2, num_nodes=3).processes == 6


def test_ranks_split_a_hand_made_shard_again_and_the_commands_take_the_options():
    calls = []
    compute = lambda **kw: calls.append(kw) or "part"  # noqa: E731
    barriers = []
    assert _compute_then_merge(1, 2, "cpu", lambda: barriers.append(1), compute, lambda: "all", True, (1, 3)) is None
    assert _compute_then_merge(0, 2, "cpu", lambda: barriers.append(0), compute, lambda: "all", True, (1, 3)) == "all"
    assert [c["shard"] for c in calls] == [(4, 6), (1, 6)]  # part 1 of 3, split over 2 ranks: 1+3·r of 6
    assert [c["progress"] for c in calls] == [False, True] and barriers == [1, 0]
    assert _compute_then_merge(0, 1, "cpu", lambda: None, compute, lambda: "all", True, (0, 1)) == "part"
    args = build_parser().parse_args(["train-explainer", "--classifier", "c", "--voc", "v", "--out", "o",
                                      "--devices", "4", "--num-nodes", "2", "--strategy", "ddp",
                                      "--precision", "bf16-mixed"])
    assert _scale(args) == Scale(devices=4, num_nodes=2, strategy="ddp", precision="bf16-mixed")
    assert _scale(build_parser().parse_args(["explain", "gradcam", "--classifier", "c", "--out", "o"])) == Scale()


def test_explainer_fit_under_ddp_writes_once_with_synchronised_validation(splits, classifier_dir, tmp_path):
    """Two ranks (gloo): one set of checkpoints and files, written by rank 0, that load; the logged val_loss is the
    same on both ranks and equals one process's loss over the whole validation set; the ranks split every epoch."""
    out, records = tmp_path / "explainer", tmp_path / "records"
    records.mkdir()
    datamodule = SaliencyDataModule(splits["train"], splits["val"], batch_size=2)
    best = fit_explainer(datamodule, out, classifier_dir=classifier_dir, max_epochs=2, width=4, lr=1e-3,
                         progress=False, accelerator="cpu", callbacks=[RecordRank(records)],
                         scale=TWO)
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    epoch = min(range(2), key=ranks[0]["val_loss"].__getitem__)
    best_file = f"epoch={epoch}-step={2 * (epoch + 1)}.ckpt"  # 2 batches of 2 images per rank and epoch
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [best_file, "last.ckpt"]
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch in range(2):
        seen = [set(r["images"][epoch]) for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]  # one shuffled order dealt to the ranks
        assert seen[0] | seen[1] == {s.image_id for s in splits["train"]}
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]
    description = json.loads((out / "explainer.json").read_text())
    network, _ = load_trained_explainer(out)
    for ours, saved in zip(best.explainer.state_dict().values(), network.state_dict().values()):
        assert torch.equal(ours, saved)
    module = ExplainerModule.load_from_checkpoint(out / "checkpoints" / best_file, weights_only=True).eval()
    with torch.no_grad():
        whole = sum(float(module.losses(collate(splits["val"][i:i + 2]), "val")[0]) * 2 for i in range(0, 8, 2)) / 8
    assert description["best_val_loss"] == pytest.approx(whole, abs=1e-6) == pytest.approx(ranks[0]["val_loss"][epoch])


class KilledOnRankOne(Dataset):
    """``samples``, except that rank 1 of a distributed run dies (SIGKILL) when it loads sample ``at``."""

    def __init__(self, samples: list[Sample], at: int) -> None:
        self.samples, self.at = samples, at
        self.ids = [sample.image_id for sample in samples]  # as the loaders have: no image is read to list them

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        if index == self.at and dist.is_initialized() and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.samples[index]


def _stamps(folder) -> dict:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("[0-9]*.*") if not path.name.endswith(".tmp")}


@pytest.mark.parametrize("store", ["files", "chunks"])
def test_two_process_explain_equals_one_and_resumes_after_a_rank_is_killed(splits, classifier_dir, tmp_path, store):
    classifier, _ = load_trained_classifier(classifier_dir)
    images = splits["test"]  # 8 images: batches 0..3 of 2; rank 1 takes batches 1 and 3 and dies on image 6
    options = {"batch_size": 2, "store": store, "dtype": "float16"}
    one = explain_to_disk("gradcam", classifier, images, tmp_path / "one", progress=False, **options)
    with pytest.raises(Exception, match="(?i)signal|exited"):
        explain_on_ranks(TWO, "gradcam", classifier, KilledOnRankOne(images, 6), tmp_path / "two", progress=False,
                         **options)
    before = _stamps(tmp_path / "two" / {"files": "maps", "chunks": "chunks"}[store])
    finished_by_rank_one = {"files": "maps/000019.npz", "chunks": "chunks/000001.npz"}[store]
    assert tmp_path / "two" / finished_by_rank_one in before
    two = explain_on_ranks(TWO, "gradcam", classifier, images, tmp_path / "two", progress=False, **options)
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in before.items())  # not computed again
    assert two == one and list(two["images"]) == [s.image_id for s in images]
    assert not list((tmp_path / "two").glob("*/*.tmp")) and not list((tmp_path / "two" / "shards").iterdir())
    for image_id in two["images"]:
        maps, targets = load_maps(tmp_path / "two", image_id)
        expected, expected_targets = load_maps(tmp_path / "one", image_id)
        assert maps.dtype == torch.float16 and torch.equal(maps.nan_to_num(), expected.nan_to_num())
        assert torch.equal(targets, expected_targets)


def test_two_process_bench_run_equals_one_and_resumes_after_a_rank_is_killed(splits, classifier_dir, tmp_path):
    classifier, _ = load_trained_classifier(classifier_dir)
    images = splits["test"]
    options = {"metric_names": ["pointing_game", "energy", "saliency_metric"], "batch_size": 2, "progress": False,
               "bootstrap": 50}
    one = run_benchmark(classifier, images, ["gradcam", "zeros"], tmp_path / "one", **options)
    with pytest.raises(Exception, match="(?i)signal|exited"):
        run_benchmark_on_ranks(TWO, classifier, KilledOnRankOne(images, 6), ["gradcam", "zeros"], tmp_path / "two",
                               **options)
    before = _stamps(tmp_path / "two" / "scores")
    assert tmp_path / "two" / "scores" / "gradcam" / "000001.json" in before
    two = run_benchmark_on_ranks(TWO, classifier, images, ["gradcam", "zeros"], tmp_path / "two", **options)
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in before.items())
    for name in ("gradcam", "zeros"):  # values, intervals, per-class means (NaN where undefined, in both)
        assert json.dumps(two["rows"][name]["scores"]) == json.dumps(one["rows"][name]["scores"])
        assert two["rows"][name]["images"] == 8 and not two["rows"][name]["batches_missing"]
    assert (tmp_path / "two" / "scores.csv").read_text() == (tmp_path / "one" / "scores.csv").read_text()
