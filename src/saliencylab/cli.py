"""The ``saliencylab`` command line. The only module that reads argv."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path


def _quiet_lightning() -> None:
    """Keep the terminal for our own progress: Lightning's info lines and a library deprecation notice go."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _demo(args: argparse.Namespace) -> int:
    from saliencylab.bench.demo import run_demo

    _quiet_lightning()
    from saliencylab.data.synthetic import SyntheticConfig

    config = SyntheticConfig(image_size=args.image_size, train=args.train, val=args.val, test=args.test,
                             seed=args.seed)
    run_demo(args.out, fresh=args.fresh, device=args.device, config=config, epochs=args.epochs,
             explainer_epochs=args.explainer_epochs, slow_images=args.slow_images, progress=not args.no_progress)
    print(f"open {Path(args.out) / 'report.html'} in a browser")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from saliencylab.data.synthetic import SyntheticConfig, write_synthetic

    config = SyntheticConfig(image_size=args.image_size, train=args.train, val=args.val, test=args.test,
                             seed=args.seed)
    root = write_synthetic(args.out, config, overwrite=args.fresh, progress=not args.no_progress)
    print(f"VOC2007 layout: {root / 'voc' / 'VOCdevkit' / 'VOC2007'}")
    print(f"COCO layout:    {root / 'coco'} (annotations/instances_<split>.json, <split>/*.jpg)")
    return 0


def _speed(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from saliencylab.bench.speed import HEADER, run_speed

    print(HEADER)
    rows = run_speed(args.model, args.size, args.batch, args.methods, args.settings, args.device, args.repeats,
                     progress=lambda line: print(line, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    return 0


def _setting(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (numbers, lists, booleans); for --set."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def _explain(args: argparse.Namespace) -> int:
    from saliencylab.bench.export import explain_to_disk
    from saliencylab.data import COCODataset, ImageFolder, Resize, VOCDataset
    from saliencylab.training.classifier import load_trained_classifier

    classifier, description = load_trained_classifier(args.classifier)
    size = args.image_size or description.get("data", {}).get("image_size", 224)
    resize = Resize(size)
    sources = [args.voc, args.coco_json, args.images]
    if sum(source is not None for source in sources) != 1:
        raise ValueError("give exactly one of --voc ROOT, --coco-json FILE (with --coco-images DIR) or --images FOLDER")
    if args.voc is not None:
        dataset = VOCDataset(args.voc, args.split, classifier.class_names, transform=resize)
    elif args.coco_json is not None:
        if args.coco_images is None:
            raise ValueError("--coco-json needs --coco-images, the folder of its images")
        dataset = COCODataset(args.coco_images, args.coco_json, transform=resize)
    else:
        dataset = ImageFolder(args.images, classifier.class_names, transform=resize)
    manifest = explain_to_disk(args.method, classifier, dataset, args.out, hyperparameters=dict(args.set),
                               targets=args.targets, batch_size=args.batch_size, device=args.device,
                               progress=not args.no_progress)
    print(f"{len(manifest['images'])} images explained in {args.out} (manifest.json, maps/*.npz)")
    return 0


def _train_explainer(args: argparse.Namespace) -> int:
    from saliencylab.data.module import SaliencyDataModule
    from saliencylab.training.classifier import load_trained_classifier
    from saliencylab.training.explainer import fit_explainer, load_preset

    _quiet_lightning()
    preset = load_preset(args.preset)
    settings = {**preset["explainer"], **dict(args.set)}
    if args.variant:
        settings["variant"] = args.variant
    if args.epochs is not None:
        settings["max_epochs"] = args.epochs
    classifier, _ = load_trained_classifier(args.classifier)
    size = args.image_size or preset["data"]["image_size"]
    batch_size = args.batch_size or preset["data"]["batch_size"]
    if (args.voc is None) == (args.coco_train_json is None):
        raise ValueError("give exactly one data source: --voc ROOT, or --coco-train-json/--coco-train-images "
                         "with --coco-val-json/--coco-val-images")
    if args.voc is not None:
        datamodule = SaliencyDataModule.from_voc(args.voc, size, batch_size, classifier.class_names,
                                                 train_split=args.train_split, val_split=args.val_split, test_split=None)
    else:
        datamodule = SaliencyDataModule.from_coco(args.coco_train_images, args.coco_train_json, args.coco_val_images,
                                                  args.coco_val_json, image_size=size, batch_size=batch_size)
    target = ({"num_classes": classifier.num_classes} if settings.get("variant") == "fcnn"
              else {"classifier_dir": args.classifier})
    fit_explainer(datamodule, args.out, accelerator=args.device, progress=not args.no_progress, **target, **settings)
    print(f"wrote {Path(args.out) / 'explainer.safetensors'} and explainer.json; use it as "
          f"methods.build({settings.get('variant', 'explainer')!r}, classifier, checkpoint={str(args.out)!r})")
    return 0


def _methods(_args: argparse.Namespace) -> int:
    from saliencylab import methods

    for name in methods.names():
        params = ", ".join(f"{k}={v!r}" for k, v in methods.hyperparameters(name).items())
        summary = (methods.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:22s} {summary}\n{'':22s} hyper-parameters: {params}")
    return 0


def _metrics(_args: argparse.Namespace) -> int:
    from saliencylab import metrics

    for name in metrics.names():
        metric = metrics.get(name)
        direction = "higher" if metric.higher_is_better else "lower"
        print(f"{name:26s} ({direction} is better; needs {', '.join(sorted(metric.needs))}) {metric.description}")
    return 0


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--train", type=int, default=900, help="training images (default 900)")
    parser.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--test", type=int, default=200, help="test images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--fresh", action="store_true", help="rebuild cached data (and, for demo, the classifier)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saliencylab", description="Explain image classifiers and measure the explanations.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="synthetic data -> classifier -> every method and metric -> report")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    demo.add_argument("--epochs", type=int, default=15, help="most classifier epochs; early stopping ends sooner")
    demo.add_argument("--slow-images", type=int, default=16,
                      help="test images scored by the slowest optimisation methods (EP, iGOS++, MP, RISE; default 16)")
    demo.add_argument("--explainer-epochs", type=int, default=3,
                      help="most epochs of each trained explainer (default 3 to fit a CPU demo; the preset allows 30)")
    _add_data_options(demo)
    demo.set_defaults(run=_demo)

    synthetic = commands.add_parser("synthetic", help="write the synthetic dataset in VOC and COCO formats")
    synthetic.add_argument("--out", default="runs/synthetic", help="output folder (default runs/synthetic)")
    _add_data_options(synthetic)
    synthetic.set_defaults(run=_synthetic)

    explain = commands.add_parser("explain", help="write a method's maps for a dataset or image folder (resumable)")
    explain.add_argument("method", help="a registered method (see: saliencylab methods)")
    explain.add_argument("--classifier", required=True, help="folder written by classifier training (e.g. runs/demo/classifier)")
    explain.add_argument("--out", required=True, help="output folder: manifest.json and maps/<image id>.npz")
    explain.add_argument("--voc", help="VOC root (folder with VOCdevkit, VOCdevkit, or VOC2007)")
    explain.add_argument("--split", default="test", help="VOC split (default test)")
    explain.add_argument("--coco-json", help="COCO instances JSON")
    explain.add_argument("--coco-images", help="folder of the COCO JSON's images")
    explain.add_argument("--images", help="a folder of plain images")
    explain.add_argument("--targets", default="labels", choices=["labels", "top1", "top3", "top5"],
                         help="explain the ground-truth labels (default) or the top-k predicted classes")
    explain.add_argument("--image-size", type=int, help="resize side (default: the classifier's training size)")
    explain.add_argument("--batch-size", type=int, default=16)
    explain.add_argument("--device", default="cpu")
    explain.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                         help="a method hyper-parameter, e.g. --set layer=features (repeatable)")
    explain.add_argument("--no-progress", action="store_true")
    explain.set_defaults(run=_explain)

    train = commands.add_parser("train-explainer",
                                help="train an NN-Explainer / RT-Saliency / FCNN explainer from a preset (spec 000)")
    train.add_argument("--classifier", required=True, help="folder written by classifier training: the classifier to explain")
    train.add_argument("--out", required=True, help="output folder: explainer.safetensors, explainer.json, checkpoints/")
    train.add_argument("--preset", default="synthetic",
                       help="synthetic (default), vgg16_voc, resnet50_voc, vgg16_coco, resnet50_coco, or a YAML file")
    train.add_argument("--variant", choices=["explainer", "rt_saliency", "fcnn"], help="override the preset's variant")
    train.add_argument("--voc", help="VOC root (folder with VOCdevkit, VOCdevkit, or VOC2007)")
    train.add_argument("--train-split", default="train", help="VOC training split (default train)")
    train.add_argument("--val-split", default="val", help="VOC validation split for early stopping (default val)")
    train.add_argument("--coco-train-json", help="COCO instances JSON of the training images")
    train.add_argument("--coco-train-images", help="folder of the training images")
    train.add_argument("--coco-val-json", help="COCO instances JSON of the validation images")
    train.add_argument("--coco-val-images", help="folder of the validation images")
    train.add_argument("--epochs", type=int, help="most epochs (default: the preset's; early stopping ends sooner)")
    train.add_argument("--image-size", type=int, help="resize side (default: the preset's)")
    train.add_argument("--batch-size", type=int, help="default: the preset's")
    train.add_argument("--device", default="auto", help="Lightning accelerator: auto (default), cpu, gpu")
    train.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                       help="override a preset setting, e.g. --set lr=1e-4 (repeatable)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_train_explainer)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="benchmark", required=True)
    speed = bench.add_parser("speed", help="time every method against its minimum number of classifier passes")
    speed.add_argument("--model", default="small_cnn", help="small_cnn (default), resnet50, vgg16, ... (random weights)")
    speed.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    speed.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    speed.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    speed.add_argument("--settings", default="reduced", choices=["reduced", "default"],
                       help="reduced (default): cheaper counts for the slowest methods; default: the papers' settings")
    speed.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    speed.add_argument("--repeats", type=int, default=3, help="timed runs per method after a warm-up (median)")
    speed.add_argument("--json", help="also write the rows to this JSON file")
    speed.set_defaults(run=_speed)

    commands.add_parser("methods", help="list the attribution methods").set_defaults(run=_methods)
    commands.add_parser("metrics", help="list the metrics").set_defaults(run=_metrics)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as err:
        print(f"saliencylab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
