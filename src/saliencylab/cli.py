"""The ``saliencylab`` command line. The only module that reads argv."""
from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from saliencylab.files import write_atomic

if TYPE_CHECKING:
    from saliencylab.data.module import SaliencyDataModule
    from saliencylab.models.classifier import Classifier
    from saliencylab.scale import Scale


def _quiet_lightning() -> None:
    """Keep the terminal for our own progress (imported here: only the commands that train load Lightning)."""
    from saliencylab.training.fit import quiet_lightning

    quiet_lightning()


def _demo(args: argparse.Namespace) -> int:
    from saliencylab.bench.demo import run_demo

    _quiet_lightning()
    from saliencylab.data.synthetic import SyntheticConfig

    config = SyntheticConfig(image_size=args.image_size, train=args.train, val=args.val, test=args.test,
                             seed=args.seed)
    run_demo(args.out, fresh=args.fresh, device=args.device, config=config, epochs=args.epochs,
             explainer_epochs=args.explainer_epochs, slow_images=args.slow_images, masker_epochs=args.masker_epochs,
             progress=not args.no_progress)
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

    from saliencylab.bench.speed import HEADER, STEP_HEADER, run_speed, training_step_cost

    if args.aopc:
        from saliencylab.bench.speed import run_aopc_speed

        result = run_aopc_speed(args.model, args.size, args.batch, args.aopc, args.patch, args.perturbation,
                                device=args.device)
        if args.json:
            write_atomic(args.json, json.dumps(result, indent=2))
        return 0
    if args.consistency_step:
        print(f"{args.model} at {args.size} px (composites {2 * args.size} px), batch {args.batch} on {args.device}")
        print(STEP_HEADER)
        rows = training_step_cost(args.model, args.size, args.batch, args.device, args.repeats,
                                  progress=lambda line: print(line, flush=True))
    else:
        _check_methods(args.methods or [])
        print(HEADER)
        rows = run_speed(args.model, args.size, args.batch, args.methods, args.settings, args.device, args.repeats,
                         progress=lambda line: print(line, flush=True))
    if args.json:
        write_atomic(args.json, json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    return 0


def _peers(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from saliencylab.bench.peers import HEADER, run_peers

    settings: dict[str, dict] = {}
    for method, key, value in args.set:
        settings.setdefault(method, {})[key] = value
    print(HEADER)
    rows = run_peers(args.model, args.size, args.batch, args.methods, args.repeats, args.channels_last, settings,
                     progress=lambda line: print(line, flush=True), show_progress=not args.no_progress)
    if args.json:
        write_atomic(args.json, json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    return 0


def _second_order_speed(args: argparse.Namespace) -> int:
    import json

    from saliencylab.bench.speed import second_order_speed

    result = second_order_speed(args.size, entries=args.entries, location_batch=args.location_batch,
                                device=args.device)
    print(f"2ndG, VGG16-BN {result['size']} px, {result['layer']} ({result['grid'][0]}x{result['grid'][1]}x"
          f"{result['channels']}), {result['device']} with {result['threads']} threads:\n"
          f"  per-location Hessian-vector products: {result['ours_seconds_per_image']:.2f} s per image\n"
          f"  one double-backward per Hessian entry (the original): {result['original_seconds_per_entry'] * 1e3:.1f} ms"
          f" per entry x {result['original_entries_per_image']} entries = "
          f"{result['original_seconds_per_image_extrapolated'] / 3600:.2f} h per image (extrapolated from "
          f"{result['original_entries_timed']} entries); {result['speedup']:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _setting(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (numbers, lists, booleans); for --set."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as error:
        problem = str(getattr(error, "problem", "") or error).splitlines()[0]
        raise argparse.ArgumentTypeError(f"{key}: the value {value!r} is not valid YAML ({problem}); expected a "
                                         "number, word, true/false or [list]") from None


def _explain(args: argparse.Namespace) -> int:
    from saliencylab.bench.export import explain_on_ranks
    from saliencylab.data import COCODataset, ImageFolder, Resize, VOCDataset

    _check_methods([args.method])
    classifier, description = _load_classifier(args)
    resize = Resize(_classifier_size(args, description))
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
    targets = args.targets or ("top1" if args.images is not None else "labels")
    manifest = explain_on_ranks(_scale(args), args.method, classifier, dataset, args.out,
                                hyperparameters=dict(args.set), targets=targets, batch_size=args.batch_size,
                                device=args.device, progress=not args.no_progress, store=args.store, dtype=args.dtype)
    if manifest is not None:  # rank 0
        print(f"{len(manifest['images'])} images explained in {args.out} (manifest.json, "
              f"{'maps/*.npz' if args.store == 'files' else 'chunks/*.npz'})")
    return 0


def _training_settings(scheme: str, args: argparse.Namespace, **choices: object) -> tuple[dict, int, int]:
    """(settings, image size, batch size) of the ``scheme`` preset --preset: its training section with
    --set, the ``choices`` that are given (not None) and --epochs applied; --image-size / --batch-size
    over the preset's ``data``."""
    from saliencylab import presets

    preset = presets.load(scheme, args.preset)
    unknown = sorted(set(dict(args.set)) - presets.keywords(scheme))
    if unknown:
        raise ValueError(f"--set {', '.join(unknown)}: not {scheme} settings; known: "
                         f"{', '.join(sorted(presets.keywords(scheme)))}")
    settings = {**preset[scheme], **dict(args.set), **{k: v for k, v in choices.items() if v is not None}}
    if args.epochs is not None:
        settings["max_epochs"] = args.epochs
    return settings, args.image_size or preset["data"]["image_size"], args.batch_size or preset["data"]["batch_size"]


def _training_datamodule(args: argparse.Namespace, size: int, batch_size: int,
                         class_names: Sequence[str]) -> SaliencyDataModule:
    """The data of a training command: --voc ROOT (classes ``class_names``) with its splits, the --coco-*
    JSON/folder pairs, or (train-classifier) ImageNet-format --train-json/--val-json; images resized to ``size``."""
    from saliencylab.data.imagenet import ImageNetDataset
    from saliencylab.data.module import SaliencyDataModule

    if sum(source is not None for source in (args.voc, args.coco_train_json, args.train_json)) != 1:
        raise ValueError("give exactly one data source: --voc ROOT, or --coco-train-json/--coco-train-images with "
                         "--coco-val-json/--coco-val-images (train-classifier: or --train-json with --val-json)")
    if args.voc is not None:
        test_split = None if args.test_split in (None, "none") else args.test_split
        return SaliencyDataModule.from_voc(args.voc, size, batch_size, class_names, train_split=args.train_split,
                                           val_split=args.val_split, test_split=test_split)
    if args.coco_train_json is not None:
        return SaliencyDataModule.from_coco(args.coco_train_images, args.coco_train_json, args.coco_val_images,
                                            args.coco_val_json, args.coco_test_images, args.coco_test_json,
                                            image_size=size, batch_size=batch_size)
    if args.val_json is None:
        raise ValueError("--train-json needs --val-json: early stopping watches the validation loss")
    return SaliencyDataModule(ImageNetDataset(args.train_json, size=size), ImageNetDataset(args.val_json, size=size),
                              batch_size=batch_size)


def _train_classifier(args: argparse.Namespace) -> int:
    from saliencylab.data.voc import VOC_CLASSES
    from saliencylab.models.load import read_class_names
    from saliencylab import presets
    from saliencylab.training.classifier import fit_classifier

    _quiet_lightning()
    settings, size, batch_size = _training_settings("classifier", args, backbone_weights=args.backbone_weights)
    preset = presets.load("classifier", args.preset)
    names = read_class_names(args.class_names) if args.class_names else preset["data"].get("class_names", VOC_CLASSES)
    datamodule = _training_datamodule(args, size, batch_size, names)
    class_names = list(datamodule.train.class_names)
    data = {"source": args.voc or args.coco_train_json or args.train_json, "image_size": size,
            "batch_size": batch_size}
    _, scores = fit_classifier(datamodule, args.out, num_classes=len(class_names), class_names=class_names,
                               accelerator=args.device, progress=not args.no_progress, data=data,
                               resume=_resume(args), scale=_scale(args), **settings)
    if not _rank_zero():
        return 0
    shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items()) or "no test set"
    print(f"test: {shown}")
    print(f"wrote {Path(args.out) / 'classifier.safetensors'} and classifier.json; use it with --classifier {args.out}")
    return 0


def _train_consistent(args: argparse.Namespace) -> int:
    from saliencylab import presets
    from saliencylab.data.voc import VOC_CLASSES
    from saliencylab.training.consistency import fit_consistent

    _quiet_lightning()
    settings, size, batch_size = _training_settings("consistent", args, backbone_weights=args.backbone_weights,
                                                    pooling=args.pooling, consistency_weight=args.consistency_weight)
    names = presets.load("consistent", args.preset)["data"].get("class_names", VOC_CLASSES)
    datamodule = _training_datamodule(args, size, batch_size, names)
    class_names = list(datamodule.train.class_names)
    data = {"source": args.voc or args.coco_train_json or args.train_json, "image_size": size,
            "batch_size": batch_size}
    _, scores = fit_consistent(datamodule, args.out, num_classes=len(class_names), class_names=class_names,
                               negatives_cache=args.negatives_cache, accelerator=args.device, resume=_resume(args),
                               scale=_scale(args), progress=not args.no_progress, data=data, **settings)
    if not _rank_zero():
        return 0
    print("  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(f"wrote {Path(args.out) / 'classifier.safetensors'} and classifier.json; use it with --classifier {args.out}")
    return 0


def _train_explainer(args: argparse.Namespace) -> int:
    from saliencylab.training.explainer import fit_explainer

    _quiet_lightning()
    settings, size, batch_size = _training_settings("explainer", args, variant=args.variant)
    classifier, description = _load_classifier(args)
    datamodule = _training_datamodule(args, size, batch_size, classifier.class_names)
    target = ({"num_classes": classifier.num_classes} if settings.get("variant") == "fcnn"
              else {"classifier_dir": _classifier_dir(args, classifier, description)})
    fit_explainer(datamodule, args.out, accelerator=args.device, progress=not args.no_progress, resume=_resume(args),
                  scale=_scale(args), **target, **settings)
    if not _rank_zero():
        return 0
    print(f"wrote {Path(args.out) / 'explainer.safetensors'} and explainer.json; use it as "
          f"methods.build({settings.get('variant', 'explainer')!r}, classifier, checkpoint={str(args.out)!r})")
    return 0


def _classifier_size(args: argparse.Namespace, description: dict) -> int:
    """--image-size, else the classifier's own size (its training data's, timm's input size), else 224."""
    from saliencylab.models.load import classifier_image_size

    return args.image_size or classifier_image_size(description)


MODEL_OPTIONS = ("weights", "num_classes", "class_names", "mean", "std", "layer")
"""The options of --model (dest names), see _add_classifier_options."""


def _load_classifier(args: argparse.Namespace) -> tuple[Classifier, dict]:
    """The Classifier and its description named by --classifier DIR, or by --model with its options."""
    from saliencylab.models.load import load_classifier

    options = {name: getattr(args, name) for name in MODEL_OPTIONS}
    if args.classifier is not None:
        given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} belong to --model; the folder {args.classifier} holds its own "
                             "classifier settings")
        classifier, description = load_classifier(args.classifier)
    else:
        if args.weights is None:
            print(f"note: --model {args.model} without --weights has random weights", file=sys.stderr)
        classifier, description = load_classifier(args.model, **options)
    if args.channels_last:
        classifier.use_channels_last()
    return classifier, description


def _classifier_identity(args: argparse.Namespace) -> dict[str, object]:
    """What names the classifier on the command line (--classifier, or --model and its options): the engine
    records it and refuses to resume a run of another classifier."""
    return {"classifier": args.classifier, "model": args.model,
            **{name: getattr(args, name) for name in MODEL_OPTIONS if getattr(args, name) is not None}}


def _classifier_dir(args: argparse.Namespace, classifier: Classifier, description: dict) -> str:
    """--classifier DIR, or the --model classifier saved to OUT/classifier (a trained network records the
    folder of the classifier it explains, to rebuild it)."""
    if args.classifier is not None:
        return args.classifier
    from saliencylab.models.load import save_classifier

    folder = Path(args.out) / "classifier"
    extra = {"image_size": description["image_size"]} if "image_size" in description else {}
    save_classifier(classifier, folder, arch=description["arch"], weights_file=description["weights"], **extra)
    print(f"saved the --model classifier to {folder} (pass --classifier {folder} to later commands)")
    return str(folder)


def _check_methods(names: list[str]) -> None:
    """ValueError naming the registered methods when one of ``names`` is not registered."""
    from saliencylab import methods

    unknown = [name for name in names if name not in methods.names()]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; registered methods: {', '.join(methods.names())}")


def _train_masker(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from saliencylab.data.imagenet import ImageNetDataset
    from saliencylab.data.imagenet_metadata import examples_per_class, read_metadata, write_metadata
    from saliencylab.data.module import SaliencyDataModule
    from saliencylab.training.masker import fit_masker

    _quiet_lightning()
    settings, size, batch_size = _training_settings("masker", args, mode=args.mode)
    classifier, description = _load_classifier(args)
    out = Path(args.out)
    train_json = Path(args.train_json)
    if args.examples_per_class is not None:
        metadata = read_metadata(train_json)
        subset = examples_per_class(metadata.samples, args.examples_per_class, settings.get("seed", 42))
        train_json = write_metadata(out / f"train_{args.examples_per_class}_per_class.json",
                                    replace(metadata, samples=subset))
    train = ImageNetDataset(train_json, size=size)
    val = ImageNetDataset(args.val_json, size=size) if args.val_json else None
    if train.num_classes != description["num_classes"]:
        raise ValueError(f"{args.train_json} has {train.num_classes} classes but the classifier "
                         f"{description['source']} has {description['num_classes']}")
    datamodule = SaliencyDataModule(train, val, batch_size=batch_size, num_workers=args.workers)
    module = fit_masker(datamodule, out, classifier_dir=_classifier_dir(args, classifier, description),
                        resume=_resume(args), accelerator=args.device, progress=not args.no_progress,
                        scale=_scale(args), **settings)
    if not _rank_zero():
        return 0
    print(f"trained a {module.hparams.mode} masker on {len(train)} images; wrote {out / 'masker.safetensors'} "
          f"and masker.json{' (and its co-trained classifier)' if module.hparams.mode == 'ca' else ''}; use it as "
          f"methods.build('masker', classifier, checkpoint={str(out)!r})")
    return 0


def _train_inmodel(args: argparse.Namespace) -> int:
    from saliencylab import presets
    from saliencylab.data.formats import load_dataset
    from saliencylab.data.module import InMemory, SaliencyDataModule
    from saliencylab.training.inmodel import fit_inmodel

    _quiet_lightning()
    settings, size, batch_size = _training_settings("inmodel", args, loss=args.loss, epochs=args.phase_epochs)
    class_names = presets.load("inmodel", args.preset)["data"]["class_names"]
    splits = [InMemory(load_dataset(f"inmodel:{args.data}", class_names=class_names, image_size=size,
                                    options={"split": split})) for split in ("train", "val", "test")]
    datamodule = SaliencyDataModule(*splits, batch_size=batch_size, num_workers=args.workers)
    classifier, description = fit_inmodel(datamodule, args.out, num_classes=len(class_names), class_names=class_names,
                                          accelerator=args.device, progress=not args.no_progress,
                                          resume=_resume(args), scale=_scale(args), data={"image_size": size},
                                          **settings)
    if not _rank_zero():
        return 0
    print(f"trained the in-model network ({description['classifier']}, {description['loss']} loss) on "
          f"{len(splits[0])} images; test accuracy {description['test']['accuracy']:.3f} on "
          f"{description['test']['images']} images; wrote {Path(args.out) / 'classifier.safetensors'}: use "
          f"--classifier {args.out} and method 'inmodel'")
    return 0


def _aopc_grid(name: str) -> tuple[tuple[str, int], ...]:
    """The (perturbation, patch) pairs of reproduce 004's --aopc-grid."""
    from saliencylab.bench.reproduce_004 import CLAIM_GRID_004, FULL_GRID_004

    return FULL_GRID_004 if name == "full" else (CLAIM_GRID_004,)


def _phase_values(text: str) -> list[int]:
    """``A,B,C``: one integer per phase, for --phase-epochs."""
    values = text.split(",")
    if len(values) != 3 or not all(v.strip().isdigit() for v in values):
        raise argparse.ArgumentTypeError(f"expected three epoch counts A,B,C, got {text!r}")
    return [int(v) for v in values]


def _randomizable_masker(settings: dict[str, object], classifier_dir: str) -> dict[str, object]:
    """Settings under which a masker reads the classifier that gets randomised.

    A CA checkpoint reads the features of its co-trained classifier (saved in its own folder), so
    randomising any other classifier would leave its masks unchanged: that is refused. With
    ``--classifier`` the checkpoint folder itself, the loaded masker is passed as ``masker=`` so it
    reads the classifier being randomised. FIX checkpoints and other settings are returned as given.
    """
    from saliencylab.models.masker import load_trained_masker

    checkpoint = settings.get("checkpoint")
    if checkpoint is None:
        return settings
    network, description = load_trained_masker(str(checkpoint))
    if description["mode"] != "ca":
        return settings
    if Path(description["classifier_dir"]).resolve() != Path(classifier_dir).resolve():
        raise ValueError(f"{checkpoint} is a CA masker: it reads its co-trained classifier, so randomising "
                         f"{classifier_dir} would not change its masks; pass --classifier {description['classifier_dir']}")
    return {**{k: v for k, v in settings.items() if k != "checkpoint"}, "masker": network}


def _sanity(args: argparse.Namespace) -> int:
    import json

    import torch

    from saliencylab import methods
    from saliencylab.bench.masking import evenly_spaced
    from saliencylab.bench.sanity import (MEASURES, cascading_randomization, compare_maps, independent_randomization,
                                          plot_randomization)
    from saliencylab.maps import normalize_minmax
    from saliencylab.models.classifier import Classifier
    from saliencylab.models.load import load_trained_classifier

    _check_methods([args.method])
    data_test = args.mode == "data"
    if data_test and not args.other_set and args.other_classifier is None:
        raise ValueError("--mode data compares two sets of maps: give --other-set KEY=VALUE (e.g. the checkpoint of a "
                         "masker trained on train_shuffle.json) and/or --other-classifier DIR (a random-label model)")
    if not data_test and (args.other_set or args.other_classifier is not None):
        raise ValueError("--other-set and --other-classifier belong to --mode data")
    if data_test and args.layers:
        raise ValueError("--layers belongs to --mode cascading or independent")
    classifier, description = _load_classifier(args)
    classifier.to(args.device)
    dataset = _load_dataset(args, classifier, description)
    if args.images > len(dataset):
        raise ValueError(f"--images {args.images}, but --data {args.data} has {len(dataset)} images; "
                         f"pass --images {len(dataset)} or fewer")
    batch = evenly_spaced(dataset, args.images)
    images = batch.images.to(args.device)
    targets = batch.labels.argmax(dim=1).to(args.device)
    settings = dict(args.set)
    if args.method == "masker" and not data_test:
        settings = _randomizable_masker(settings, description["source"])

    def explain(model: Classifier, images: torch.Tensor, targets: torch.Tensor,
                settings: dict[str, object] = settings) -> torch.Tensor:
        """Maps in [0,1], as compare_maps needs: masks as they are, other maps min-max normalised."""
        method = methods.build(args.method, model, **settings)
        maps = method.attribute(images, targets)
        return maps if method.output_range == "unit" else normalize_minmax(maps)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sanity_{args.mode}_{args.method}"
    if data_test:
        other = classifier if args.other_classifier is None else load_trained_classifier(args.other_classifier)[0]
        other_settings = {**settings, **dict(args.other_set)}
        values = compare_maps(explain(classifier, images, targets),
                              explain(other.to(args.device), images, targets, other_settings))
        mean = {m: float(values[m].nanmean()) for m in MEASURES}
        write_atomic(f"{stem}.json", json.dumps({
            "mode": "data", "method": args.method, "classifier": description["source"], "settings": settings,
            "other_classifier": args.other_classifier or description["source"], "other_settings": other_settings,
            "mean": mean, "per_image": {m: values[m].tolist() for m in MEASURES}}, indent=2))
        print("  ".join(f"{m} {v:.4f}" for m, v in mean.items()))
        print(f"wrote {stem}.json")
        return 0
    test = cascading_randomization if args.mode == "cascading" else independent_randomization
    result = test(explain, classifier, images, targets, seed=args.seed, layers=args.layers,
                  progress=not args.no_progress)
    write_atomic(f"{stem}.json", json.dumps(result.to_dict(), indent=2))
    plot_randomization(result, f"{stem}.png", title=f"{args.mode} randomisation: {args.method}")
    print(f"{'layer':16s}" + "".join(f"{m:>14s}" for m in MEASURES))
    for row, layer in enumerate(result.layers):
        print(f"{layer:16s}" + "".join(f"{float(result.mean[m][row]):14.4f}" for m in MEASURES))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


def _method_setting(text: str) -> tuple[str, str, object]:
    """``row:key=value`` -> (row, key, value), the value read as YAML; for the bench commands' --set."""
    method, sep, setting = text.partition(":")
    if not sep or not method or "=" in method:
        raise argparse.ArgumentTypeError(f"expected ROW:KEY=VALUE, got {text!r}")
    return (method, *_setting(setting))


def _wsol(args: argparse.Namespace) -> int:
    import json

    from saliencylab.bench.wsol import run_wsol, wsol_table
    from saliencylab.data.imagenet import ImageNetDataset
    from saliencylab.data.openimages import OpenImagesDataset

    rows = _bench_rows(args.methods, args.set, [])
    classifier, description = _load_classifier(args)
    size = _classifier_size(args, description)
    val = ImageNetDataset(args.val_json, args.boxes, size=size)
    test = None
    if args.openimages:
        root = Path(args.openimages)
        test = OpenImagesDataset(root / "dataset", root / "metadata", size=size, class_names=classifier.class_names)
    table = run_wsol(classifier, val, rows, args.out, baselines=tuple(args.baselines), test=test,
                     max_box_acc=args.max_box_acc, paper_quirks=args.paper_quirks, batch_size=args.batch_size,
                     device=args.device, progress=not args.no_progress,
                     description={"classifier": _classifier_identity(args),
                                  "dataset": {"val": args.val_json, "boxes": args.boxes,
                                              "openimages": args.openimages}})
    print(wsol_table(table), end="")
    if args.json:
        write_atomic(args.json, json.dumps(table, indent=2))
    print(f"per-image scores: {Path(args.out) / 'val'}" + (f", {Path(args.out) / 'pxap'}" if test is not None else ""))
    return 0


def _shard(text: str) -> tuple[int, int]:
    """``i/n`` -> (i, n), for --shard."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n (e.g. 0/2), got {text!r}")
    return int(index), int(count)


def _row_subset(text: str) -> tuple[str, int]:
    """``ROW:N`` -> (row, N), for --subset."""
    row, sep, count = text.partition(":")
    if not sep or not row or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected ROW:N with N >= 1 images, got {text!r}")
    return row, int(count)


def _bench_rows(specs: list[str], settings: list[tuple[str, str, object]],
                subsets: list[tuple[str, int]]) -> dict[str, object]:
    """Rows of ``bench run``: ``NAME`` or ``NAME=METHOD`` positionals, ``--set ROW:KEY=VALUE``, ``--subset ROW:N``."""
    from saliencylab.bench.run import Row, as_rows

    methods_of = {}
    for spec in specs:
        name, sep, method = spec.partition("=")
        methods_of[name] = method if sep else name
    per_row: dict[str, dict[str, object]] = {name: {} for name in methods_of}
    limits: dict[str, int] = {}
    for kind, pairs in (("--set", [(row, (key, value)) for row, key, value in settings]), ("--subset", subsets)):
        for row, value in pairs:
            if row not in methods_of:
                raise ValueError(f"{kind} names row {row!r}, which is not benchmarked ({', '.join(methods_of)})")
            if kind == "--set":
                per_row[row][value[0]] = value[1]
            else:
                limits[row] = value
    return as_rows({name: Row(method, per_row[name], limits.get(name)) for name, method in methods_of.items()})


def _bench_run(args: argparse.Namespace) -> int:
    from saliencylab.bench.run import run_benchmark_on_ranks, table

    rows = _bench_rows(args.rows, args.set, args.subset)
    classifier, description = _load_classifier(args)
    dataset = _load_dataset(args, classifier, description)
    results = run_benchmark_on_ranks(_scale(args), classifier, dataset, rows, args.out, metric_names=args.metrics,
                                     description={"classifier": _classifier_identity(args),
                                                  "dataset": {"data": args.data, **dict(args.data_set)}},
                                     targets=args.targets, batch_size=args.batch_size, seed=args.seed,
                                     options=dict(args.option), device=args.device, progress=not args.no_progress,
                                     bootstrap=args.bootstrap, shard=args.shard)
    if results is None:  # not rank 0
        return 0
    print(table(results), end="")
    out = Path(args.out)
    for flag, name in ((args.json, "results.json"), (args.csv, "results.csv"), (args.html, "report.html")):
        if flag:
            write_atomic(flag, (out / name).read_text(encoding="utf-8"))
    missing = sum(row["batches_missing"] for row in results["rows"].values())
    print(f"wrote {out / 'results.json'}, results.csv, scores.csv and report.html"
          + (f"; {missing} batches are left to other shards (rerun or `bench merge` when they finish)" if missing else ""))
    return 0


def _bench_scale(args: argparse.Namespace) -> int:
    import json

    from saliencylab.bench.scale import run_scale, scale_tables

    _quiet_lightning()
    result = run_scale(tuple(args.processes), strategy=args.strategy, images=args.images, size=args.image_size,
                       store_images=args.store_images)
    print(scale_tables(result), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _bench_merge(args: argparse.Namespace) -> int:
    from saliencylab.bench.run import merge_runs, table

    print(table(merge_runs(args.out, args.shards, bootstrap=args.bootstrap)), end="")
    return 0


REPRODUCE_IMAGE_SIZES = {"000": 64, "002": 64}
"""Image side of a reproduction's synthetic data without ``--image-size`` (else the demo's 96): 000 at 64 px, where
RISE and EP at the paper's settings fit 20 minutes on 2 CPU cores; 002, the consistent presets' ``synthetic`` data."""


def _train_hardness(args: argparse.Namespace) -> int:
    from saliencylab.data.formats import load_dataset
    from saliencylab.data.module import SaliencyDataModule
    from saliencylab.training.hardness import fit_hardness

    _quiet_lightning()
    classifier, description = _load_classifier(args)
    size = _classifier_size(args, description)
    train, val = (load_dataset(args.data, class_names=classifier.class_names, image_size=size,
                               options={**dict(args.data_set), "split": split}) for split in ("train", "val"))
    datamodule = SaliencyDataModule(train, val, batch_size=args.batch_size, num_workers=args.workers)
    fitted = fit_hardness(datamodule, args.out, classifier_dir=_classifier_dir(args, classifier, description),
                          max_epochs=args.epochs, seed=args.seed, progress=not args.no_progress,
                          accelerator=args.device, resume=_resume(args), scale=_scale(args), **dict(args.set))
    if not _rank_zero():
        return 0
    print(f"best validation rejection AUC {fitted['best_val_rejection_auc']:.2f} (of 98); wrote "
          f"{Path(args.out) / 'hardness.json'}, hardness.safetensors and the fine-tuned classifier/")
    return 0


def _insecurity(args: argparse.Namespace) -> int:
    import torch

    from saliencylab.data.formats import load_dataset
    from saliencylab.insecurity.explain import explain_hardest, write_insecurities
    from saliencylab.models.load import load_trained_classifier
    from saliencylab.training.hardness import load_hardness

    if args.hardness is None and args.score == "hardness":
        raise ValueError("--score hardness needs --hardness DIR (a train-hardness folder) instead of --classifier")
    if args.hardness is not None:
        classifier, predictor = load_hardness(args.hardness)
        _, description = load_trained_classifier(Path(args.hardness) / "classifier")
    else:
        (classifier, description), predictor = load_trained_classifier(args.classifier), None
    dataset = load_dataset(args.data, class_names=classifier.class_names,
                           image_size=_classifier_size(args, description), options=dict(args.data_set))
    device = torch.device(args.device)
    records = explain_hardest(classifier.to(device), dataset, score=args.score, attributions=[args.attribution],
                              layer=args.layer, count=args.images, batch_size=args.batch_size,
                              predictor=None if predictor is None else predictor.to(device), device=device,
                              progress=not args.no_progress)[args.attribution]
    out = write_insecurities(records, dataset, args.out, list(classifier.class_names), fraction=args.fraction,
                             figures=args.figures)
    print(f"wrote {len(records)} images' insecurities to {out / 'maps'}, overlays to {out / 'figures'} and "
          f"{out / 'manifest.json'}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from saliencylab.bench.reproduce import reproduce
    from saliencylab.data.synthetic import SyntheticConfig

    _quiet_lightning()
    options: dict[str, object] = {} if args.epochs is None else {"epochs": args.epochs}
    if args.paper == "004":
        if args.epochs is not None:
            raise ValueError("--epochs does not apply to paper 004: give its three phases' epochs with --phase-epochs")
        options.update(images=args.images, phase_epochs=args.phase_epochs, grid=_aopc_grid(args.aopc_grid))
    elif args.phase_epochs is not None:
        raise ValueError("--phase-epochs applies to paper 004 only")
    if args.paper == "000":
        overrides: dict[str, dict] = {}
        for method, key, value in args.set:
            overrides.setdefault(method, {})[key] = value
        options.update(images=args.images, explainer_epochs=args.explainer_epochs, overrides=overrides)
    elif args.set or args.explainer_epochs is not None or (args.images != 50 and args.paper != "004"):
        raise ValueError("--set and --explainer-epochs apply to paper 000 only, --images to 000 and 004")
    if args.paper == "001":
        options["masker_epochs"] = args.masker_epochs
    if args.paper == "002":
        options["seeds"] = args.seeds
    if args.paper == "003":
        options.update(hardness_epochs=args.hardness_epochs, images=args.hard_images, seeds=args.seeds)
    size = args.image_size or REPRODUCE_IMAGE_SIZES.get(args.paper, 96)
    config = SyntheticConfig(image_size=size, train=args.train, val=args.val, test=args.test, seed=args.seed)
    out = args.out or str(Path("runs") / "reproduce" / args.paper)
    reproduce(args.paper, out, fresh=args.fresh, device=args.device, config=config, progress=not args.no_progress,
              **options)
    print(f"open {Path(out) / 'report.html'} in a browser")
    return 0


def _methods(_args: argparse.Namespace) -> int:
    from saliencylab import methods

    for name in methods.names():
        params = ", ".join(f"{k}={v!r}" for k, v in methods.hyperparameters(name).items())
        method = methods.get(name)
        summary = (method.__doc__ or "").strip().splitlines()[0]
        declared = ", ".join([f"{method.output_range} maps", "per class" if method.per_class else "class-agnostic",
                              *(["trained (checkpoint=)"] if method.trained else [])])
        print(f"{name:22s} {summary}\n{'':22s} {declared} (at the defaults)\n{'':22s} hyper-parameters: {params}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from saliencylab import presets

    if args.name is not None:
        print(presets.path(args.scheme, args.name).read_text(), end="")
        return 0
    for scheme in [args.scheme] if args.scheme else presets.FIT:
        print(f"{scheme}: {', '.join(presets.names(scheme))}")
    return 0


def _metrics(_args: argparse.Namespace) -> int:
    from saliencylab import metrics

    for name in metrics.names():
        metric = metrics.get(name)
        direction = {True: "higher is better", False: "lower is better", None: "a statistic"}[metric.higher_is_better]
        needs = ", ".join(sorted(metric.needs)) or "maps only"
        named = "" if metric.by_default else "; only when named"
        print(f"{name:28s} ({direction}; per {metric.per}; {metric.aggregation}; needs {needs}{named}) "
              f"{metric.description}")
    return 0


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--train", type=int, default=900, help="training images (default 900)")
    parser.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--test", type=int, default=200, help="test images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--fresh", action="store_true", help="rebuild cached data (and, for demo, the classifier)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_training_data_options(parser: argparse.ArgumentParser, classifier: bool = False) -> None:
    """--voc ROOT with its splits, or --coco-<stage>-json/-images pairs of train and val; with ``classifier``
    also a test split / test pair and ImageNet-format --train-json/--val-json (absent ones default to None)."""
    parser.add_argument("--voc", help="VOC root (folder with VOCdevkit, VOCdevkit, or VOC2007)")
    parser.add_argument("--train-split", default="train", help="VOC training split (default train)")
    parser.add_argument("--val-split", default="val", help="VOC validation split for early stopping (default val)")
    stages = (("train", "training"), ("val", "validation"), ("test", "test"))
    for stage, words in stages if classifier else stages[:2]:
        parser.add_argument(f"--coco-{stage}-json", help=f"COCO instances JSON of the {words} images")
        parser.add_argument(f"--coco-{stage}-images", help=f"folder of the {words} images")
    if not classifier:
        parser.set_defaults(test_split=None, coco_test_json=None, coco_test_images=None, train_json=None, val_json=None)
        return
    parser.add_argument("--test-split", default="test", help="VOC split scored after training (default test; "
                                                             "none: no test)")
    parser.add_argument("--train-json", metavar="FILE", help="ImageNet-format metadata JSON of the training images")
    parser.add_argument("--val-json", metavar="FILE", help="ImageNet-format metadata JSON of the validation images")


def _resume(args: argparse.Namespace) -> bool:
    """--resume, with a note when --out holds nothing to resume from."""
    from saliencylab.training.fit import last_checkpoint

    if args.resume and last_checkpoint(args.out) is None:
        print(f"note: --resume, but {Path(args.out) / 'checkpoints'} holds no last.ckpt: starting from scratch",
              file=sys.stderr)
    return args.resume


def _add_training_options(parser: argparse.ArgumentParser, set_example: str) -> None:
    """The options every preset-driven training command shares: size, batch, device, --set, progress, --resume
    and the scale options."""
    parser.add_argument("--image-size", type=int, metavar="S", help="resize side (default: the preset's)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="default: the preset's")
    parser.add_argument("--device", default="auto", help="Lightning accelerator: auto (default), cpu, gpu")
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a preset setting, e.g. {set_example} (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    _add_resume_option(parser)
    _add_scale_options(parser)


def _add_resume_option(parser: argparse.ArgumentParser) -> None:
    """--resume of the training commands (every fit goes through training.fit.fit_module)."""
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run into --out from OUT/checkpoints/last.ckpt (weights, "
                             "optimiser, epoch, early stopping), given the same settings; without it training "
                             "starts from scratch")


def _add_classifier_options(parser: argparse.ArgumentParser) -> None:
    """--classifier DIR or --model torchvision:NAME|timm:NAME with its options; read by _load_classifier."""
    group = parser.add_argument_group("classifier", "the classifier to explain: --classifier DIR or --model SPEC")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--classifier", metavar="DIR",
                        help="folder written by train-classifier or save_classifier (e.g. runs/demo/classifier)")
    source.add_argument("--model", metavar="SPEC",
                        help="torchvision:NAME (e.g. torchvision:resnet50) or timm:NAME, built with random weights "
                             "and then --weights loaded; nothing is downloaded")
    group.add_argument("--weights", metavar="FILE",
                       help="--model's weights: safetensors, a torch.save state dict or a Lightning .ckpt")
    group.add_argument("--num-classes", type=int, metavar="N",
                       help="--model's outputs (default: the count of --class-names, else 1000)")
    group.add_argument("--class-names", metavar="FILE",
                       help="one name a line, a JSON list, or torchvision:WEIGHTS (e.g. "
                            "torchvision:ResNet18_Weights.IMAGENET1K_V1; default class_0 ...)")
    group.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="--model's normalisation mean (default ImageNet's; timm: the model's)")
    group.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="--model's normalisation std (default ImageNet's; timm: the model's)")
    group.add_argument("--layer", metavar="NAME",
                       help="module path CAM methods use by default (layer=auto), e.g. layer4")
    group.add_argument("--channels-last", action="store_true",
                       help="run the network channels-last (NHWC): about 1.5x faster convolutions on CPUs, the same "
                            "maps to float rounding")


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """--data FORMAT:PATH (any registered dataset format) and its --data-set options; read by _load_dataset."""
    parser.add_argument("--data", required=True, metavar="FORMAT:PATH",
                        help="the dataset: voc:ROOT, coco:JSON (--data-set images=DIR), imagenet:META/val.json "
                             "(--data-set boxes=META/val_bboxes.json), openimages:ROOT, folder:DIR (--data-set masks=DIR)")
    parser.add_argument("--data-set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a dataset option, e.g. split=val (repeatable; see the README's format table)")


def _load_dataset(args: argparse.Namespace, classifier: Classifier, description: dict):
    """The dataset named by --data and --data-set, resized to --image-size or the classifier's training size."""
    from saliencylab.data.formats import load_dataset

    return load_dataset(args.data, class_names=classifier.class_names, image_size=_classifier_size(args, description),
                        options=dict(args.data_set))


def _add_evaluation_options(parser: argparse.ArgumentParser, size_note: str = "") -> None:
    """The classifier options, --val-json, --image-size and --device of the commands that explain
    ImageNet-format images."""
    _add_classifier_options(parser)
    parser.add_argument("--val-json", required=True, metavar="FILE", help="metadata JSON of the images (e.g. META/val.json)")
    parser.add_argument("--image-size", type=int, metavar="S",
                        help=f"resize side (default: the classifier's training size, else 224){size_note}")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")


def _add_scale_options(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """--devices, --num-nodes, --strategy (and for training --precision): Lightning's, see saliencylab.scale."""
    group = parser.add_argument_group("scale", "processes and machines (Lightning's options; README: Scaling out)")
    group.add_argument("--devices", type=int, default=1, metavar="N",
                       help="processes per machine: one per GPU, or CPU processes (default 1)")
    group.add_argument("--num-nodes", type=int, default=1, metavar="N", help="machines (default 1)")
    group.add_argument("--strategy", default="auto", metavar="NAME",
                       help="Lightning strategy: auto (default; ddp for several devices), ddp, ddp_spawn, "
                            "ddp_forkserver" + (", fsdp" if precision else ""))
    if precision:
        group.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"],
                           help="32 (default), bf16-mixed, 16-mixed (mixed precision on GPU)")


def _rank_zero() -> bool:
    """False in the other ranks of a ``--strategy ddp`` run, which run the whole command too: rank 0 reports."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _scale(args: argparse.Namespace) -> Scale:
    """The Scale of --devices / --num-nodes / --strategy / --precision."""
    from saliencylab.scale import Scale

    return Scale(devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
                 precision=getattr(args, "precision", "32"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saliencylab", description="Explain image classifiers and measure the explanations.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error in your input too (before the command: "
                             "saliencylab --debug explain ...)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="synthetic data -> classifier -> every method and metric -> report")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    demo.add_argument("--epochs", type=int, default=15, help="most classifier epochs; early stopping ends sooner")
    demo.add_argument("--slow-images", type=int, default=8,
                      help="test images scored by the slowest methods (EP, iGOS++, MP, RISE, Score-CAM; default 8)")
    demo.add_argument("--masker-epochs", type=int, default=3,
                      help="epochs of each CASME masker of the paper-001 part (default 3)")
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
    _add_classifier_options(explain)
    explain.add_argument("--out", required=True, help="output folder: manifest.json and maps/<image id>.npz "
                                                      "(or chunks/<batch>.npz)")
    explain.add_argument("--voc", help="VOC root (folder with VOCdevkit, VOCdevkit, or VOC2007)")
    explain.add_argument("--split", default="test", help="VOC split (default test)")
    explain.add_argument("--coco-json", help="COCO instances JSON")
    explain.add_argument("--coco-images", help="folder of the COCO JSON's images")
    explain.add_argument("--images", help="a folder of plain images")
    explain.add_argument("--targets", choices=["labels", "top1", "top3", "top5"],
                         help="explain the ground-truth labels (default; --images: top1) or the top-k predicted "
                              "classes")
    explain.add_argument("--image-size", type=int, help="resize side (default: the classifier's training size)")
    explain.add_argument("--batch-size", type=int, default=16)
    explain.add_argument("--device", default="cpu")
    explain.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                         help="a method hyper-parameter, e.g. --set layer=features (repeatable)")
    explain.add_argument("--store", default="files", choices=["files", "chunks"],
                         help="files: one .npz per image (default); chunks: one .npz per batch (10^5 maps and more)")
    explain.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                         help="stored maps' type (float16: half the bytes)")
    explain.add_argument("--no-progress", action="store_true")
    _add_scale_options(explain, precision=False)
    explain.set_defaults(run=_explain)

    train = commands.add_parser("train-explainer",
                                help="train an NN-Explainer / RT-Saliency / FCNN explainer from a preset (NN-Explainer, Stalder et al. 2022)")
    _add_classifier_options(train)
    train.add_argument("--out", required=True, help="output folder: explainer.safetensors, explainer.json, checkpoints/")
    train.add_argument("--preset", default="synthetic",
                       help="synthetic (default), vgg16_voc, resnet50_voc, vgg16_coco, resnet50_coco, or a YAML file")
    train.add_argument("--variant", choices=["explainer", "rt_saliency", "fcnn"], help="override the preset's variant")
    _add_training_data_options(train)
    train.add_argument("--epochs", type=int, help="most epochs (default: the preset's; early stopping ends sooner)")
    _add_training_options(train, "--set lr=1e-4")
    train.set_defaults(run=_train_explainer)

    fit = commands.add_parser("train-classifier", help="train a zoo classifier (small_cnn, vgg16, resnet18, resnet50, "
                                                      "alexnet) with BCE, Adam and early stopping (the NN-Explainer authors' recipe)")
    fit.add_argument("--out", required=True, metavar="DIR",
                     help="output folder: classifier.safetensors, classifier.json, checkpoints/")
    fit.add_argument("--preset", default="synthetic", metavar="NAME",
                     help="synthetic (default), vgg16_voc, resnet50_voc, or a YAML file")
    _add_training_data_options(fit, classifier=True)
    fit.add_argument("--class-names", metavar="FILE",
                     help="VOC class names, one a line or a JSON list (default: the preset's, else VOC's 20)")
    fit.add_argument("--backbone-weights", metavar="FILE",
                     help="torchvision ImageNet state dict of the backbone (vgg16, resnet18/50, alexnet)")
    fit.add_argument("--epochs", type=int, metavar="N", help="most epochs (default: the preset's; early stopping "
                                                              "ends sooner)")
    _add_training_options(fit, "--set lr=1e-4 or --set arch=resnet18")
    fit.set_defaults(run=_train_classifier)

    consistent = commands.add_parser("train-consistent", help="train a classifier whose Grad-CAM is consistent "
                                     "through 2x2 image grids, optionally with GMP (paper 002)")
    consistent.add_argument("--out", required=True, metavar="DIR",
                            help="output folder: classifier.safetensors, classifier.json, checkpoints/")
    consistent.add_argument("--preset", default="synthetic", metavar="NAME",
                            help="synthetic (default; ImageNet-format data), synthetic_multilabel, resnet18_imagenet, "
                                 "resnet50_imagenet, resnet18_coco, or a YAML file")
    _add_training_data_options(consistent, classifier=True)
    consistent.add_argument("--backbone-weights", metavar="FILE",
                            help="torchvision ImageNet state dict loaded before the new head (resnet18_coco: the "
                                 "ImageNet checkpoint)")
    consistent.add_argument("--pooling", choices=["avg", "max"], help="override the preset's: max = GMP")
    consistent.add_argument("--lambda", dest="consistency_weight", type=float, metavar="L",
                            help="consistency loss weight, the paper's λ on its 14x14 grid, scaled by cells/196 on "
                                 "other grids (default: the preset's; 0 trains the baseline)")
    consistent.add_argument("--negatives-cache", metavar="FILE", help="JSON cache of the negative lists")
    consistent.add_argument("--epochs", type=int, metavar="N", help="epochs (default: the preset's)")
    _add_training_options(consistent, "--set lr=0.01 or --set detach_target=true")
    consistent.set_defaults(run=_train_consistent)

    inmodel = commands.add_parser("train-inmodel", help="train the in-model explainer-classifier in three phases "
                                                         "(Rio-Torto et al. 2020, paper 004)")
    inmodel.add_argument("--data", required=True, metavar="ROOT",
                         help="a root in the in-model layout (trainval/ and test/: data.csv, images/, masks/; "
                              "saliencylab.data.polygons or imagenet_hvz write it)")
    inmodel.add_argument("--out", required=True, metavar="DIR", help="output folder (a classifier folder)")
    inmodel.add_argument("--preset", default="polygons", metavar="NAME",
                         help="polygons (default), imagenet_hvz, nih_nci, or a YAML file")
    inmodel.add_argument("--loss", choices=["unsupervised", "hybrid"], help="override the preset's loss")
    inmodel.add_argument("--phase-epochs", type=_phase_values, metavar="A,B,C", help="epochs of the three phases")
    inmodel.add_argument("--workers", type=int, metavar="N", default=0, help="data loader worker processes (default 0)")
    _add_training_options(inmodel, "--set alpha=[1.0,0.25,0.9] (any fit_inmodel / InModelModule setting)")
    inmodel.set_defaults(run=_train_inmodel, epochs=None)

    masker = commands.add_parser("train-masker", help="train a CASME masker (FIX or CA) on ImageNet-format data "
                                                       "(paper 001)")
    _add_classifier_options(masker)
    masker.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: masker.safetensors, masker.json, checkpoints/ (CA: also the co-trained "
                             "classifier)")
    masker.add_argument("--train-json", required=True, metavar="FILE",
                        help="metadata JSON of the training images (e.g. META/train.json); META/train_shuffle.json "
                             "(random labels) trains the model of the data-randomisation sanity check")
    masker.add_argument("--val-json", metavar="FILE",
                        help="metadata JSON of validation images, logged only (default: none)")
    masker.add_argument("--preset", metavar="NAME", default="synthetic_fix",
                        help="synthetic_fix (default), synthetic_ca, fix, ca, or a YAML file")
    masker.add_argument("--mode", choices=["fix", "ca"], help="override the preset's mode (the CA presets also set "
                                                             "the snapshot pool: prefer --preset ca / synthetic_ca)")
    masker.add_argument("--epochs", type=int, metavar="N", help="epochs (default: the preset's max_epochs)")
    masker.add_argument("--examples-per-class", type=int, metavar="K",
                        help="train on K images per class drawn with the preset's seed (written to "
                             "OUT/train_K_per_class.json; default: every image)")
    masker.add_argument("--workers", type=int, metavar="N", default=0, help="data loader worker processes (default 0)")
    _add_training_options(masker, "--set lambda_out=15")
    masker.set_defaults(run=_train_masker)

    hardness = commands.add_parser("train-hardness", help="train a classifier jointly with its hardness predictor "
                                   "(deliberative explanations, paper 003)")
    _add_classifier_options(hardness)
    hardness.add_argument("--data", required=True, metavar="FORMAT:PATH",
                          help="a dataset with train and val splits, e.g. cub:CUB_200_2011 or ade20k:ADEChallengeData2016")
    hardness.add_argument("--data-set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                          help="a dataset option other than split, e.g. seed=1 (repeatable)")
    hardness.add_argument("--out", required=True, metavar="DIR",
                          help="output folder: hardness.json, hardness.safetensors, classifier/ (fine-tuned), checkpoints/")
    hardness.add_argument("--epochs", type=int, default=60, metavar="N", help="epochs (default 60, the paper's)")
    hardness.add_argument("--batch-size", type=int, default=128, metavar="B", help="default 128, the paper's")
    hardness.add_argument("--image-size", type=int, metavar="S", help="crop side (default: the classifier's size)")
    hardness.add_argument("--workers", type=int, default=0, metavar="N", help="data loader workers (default 0)")
    hardness.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    hardness.add_argument("--device", default="auto", help="Lightning accelerator: auto (default), cpu, gpu")
    hardness.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                          help="a HardnessModule hyper-parameter, e.g. --set press=10 (ADE20K) or --set hardness_lr=1e-4")
    hardness.add_argument("--no-progress", action="store_true")
    _add_resume_option(hardness)
    _add_scale_options(hardness)
    hardness.set_defaults(run=_train_hardness)

    insecurity = commands.add_parser("insecurity", help="insecurity maps of a dataset's hardest images: which class "
                                     "pairs the classifier hesitates between and where (paper 003)")
    source = insecurity.add_mutually_exclusive_group(required=True)
    source.add_argument("--classifier", metavar="DIR", help="a classifier folder (scores confidence and entropy)")
    source.add_argument("--hardness", metavar="DIR",
                        help="a train-hardness folder: its fine-tuned classifier and hardness predictor (every score)")
    insecurity.add_argument("--data", required=True, metavar="FORMAT:PATH", help="e.g. cub:CUB_200_2011")
    insecurity.add_argument("--data-set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                            help="a dataset option, e.g. split=test (repeatable)")
    insecurity.add_argument("--score", default="hardness", choices=["confidence", "entropy", "hardness"],
                            help="difficulty score (default hardness; needs --hardness)")
    insecurity.add_argument("--layer", default="auto", metavar="NAME",
                            help="the layer attributions are read at (default: the classifier's first named layer)")
    insecurity.add_argument("--attribution", default="second_order",
                            choices=["gradient", "integrated_gradients", "second_order"],
                            help="difficulty attribution (default second_order, 2ndG)")
    insecurity.add_argument("--images", type=int, default=100, metavar="K", help="the K hardest images (default 100)")
    insecurity.add_argument("--out", required=True, metavar="DIR", help="maps/*.npz, figures/*.png, manifest.json")
    insecurity.add_argument("--fraction", type=float, default=0.1, metavar="RHO",
                            help="top fraction outlined in the figures (default 0.1)")
    insecurity.add_argument("--figures", type=int, default=20, metavar="N", help="images with a figure (default 20)")
    insecurity.add_argument("--image-size", type=int, metavar="S", help="crop side (default: the classifier's size)")
    insecurity.add_argument("--batch-size", type=int, default=16, metavar="B")
    insecurity.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    insecurity.add_argument("--no-progress", action="store_true")
    insecurity.set_defaults(run=_insecurity)

    sanity = commands.add_parser("sanity", help="model- and data-randomisation sanity checks of a method (paper 001)")
    sanity.add_argument("method", metavar="METHOD", help="a registered method (see: saliencylab methods)")
    _add_classifier_options(sanity)
    _add_dataset_options(sanity)
    sanity.add_argument("--image-size", type=int, metavar="S", help="resize side (default: the classifier's training "
                                                                    "size, else 224; at least 48 for the HOG measure)")
    sanity.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    sanity.add_argument("--mode", default="cascading", choices=["cascading", "independent", "data"],
                        help="cascading (default) or independent layer randomisation of --classifier; data: the "
                             "maps of --set/--classifier against those of --other-set/--other-classifier")
    sanity.add_argument("--images", type=int, metavar="N", default=16,
                        help="images, evenly spaced through --data, each explained for its first label (default 16)")
    sanity.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a method hyper-parameter, e.g. --set checkpoint=runs/fix (repeatable)")
    sanity.add_argument("--other-set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="data mode: a hyper-parameter of the second run, overriding --set, e.g. the checkpoint "
                             "of a masker trained on train_shuffle.json (repeatable)")
    sanity.add_argument("--other-classifier", metavar="DIR",
                        help="data mode: the second run's classifier (default --classifier)")
    sanity.add_argument("--layers", metavar="LAYER", nargs="+",
                        help="layers to randomise, output side first (default: all of them)")
    sanity.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the random weights (default 0)")
    sanity.add_argument("--out", default="runs/sanity", metavar="DIR",
                        help="output folder for sanity_<mode>_<method>.json (and .png) (default runs/sanity)")
    sanity.add_argument("--no-progress", action="store_true")
    sanity.set_defaults(run=_sanity)

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
    speed.add_argument("--aopc", type=int, metavar="STEPS",
                       help="instead: time the AOPC metric's MoRF curve of STEPS steps on --batch images, batched "
                            "against a step-by-step loop (e.g. --model resnet18 --size 224 --aopc 100)")
    speed.add_argument("--patch", type=int, default=16, help="--aopc patch side in pixels (default 16)")
    speed.add_argument("--perturbation", default="blur", help="--aopc perturbation (default blur)")
    speed.add_argument("--json", help="also write the rows to this JSON file")
    speed.add_argument("--consistency-step", action="store_true",
                       help="instead: time and memory of a Grad-CAM consistency training step (two differentiable "
                            "Grad-CAMs, double backward; paper 002) against a plain step")
    speed.set_defaults(run=_speed)

    peers = bench.add_parser("peers", help="time our methods beside Captum, pytorch-grad-cam and TorchRay's (ratios)")
    peers.add_argument("--model", default="resnet50", help="resnet50 (default), small_cnn, ... (random weights)")
    peers.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    peers.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    peers.add_argument("--methods", nargs="+", help="only these methods (default: every method with a peer)")
    peers.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after a warm-up (median)")
    peers.add_argument("--channels-last", action="store_true", help="run the network channels-last on both sides")
    peers.add_argument("--set", type=_method_setting, action="append", default=[], metavar="METHOD:KEY=VALUE",
                       help="override a setting of bench/peers.py PEER_SETTINGS for both sides, e.g. "
                            "--set rise:num_masks=1000 (repeatable)")
    peers.add_argument("--json", help="also write the rows to this JSON file")
    peers.add_argument("--no-progress", action="store_true")
    peers.set_defaults(run=_peers)
    second = bench.add_parser("second-order", help="seconds per image of 2ndG (paper 003) on VGG16-BN conv5_3 beside "
                              "the original's one double-backward per Hessian entry (extrapolated from a few)")
    second.add_argument("--size", type=int, default=224, help="image side (default 224: a 14x14x512 conv5_3)")
    second.add_argument("--entries", type=int, default=20, help="Hessian entries timed the original's way (default 20)")
    second.add_argument("--location-batch", type=int, default=64, help="Hessian-vector products at once (default 64)")
    second.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    second.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    second.set_defaults(run=_second_order_speed)

    wsol = bench.add_parser("wsol", help="WSOL table (LE, OM, F1, SM, ...; PxAP) of methods and baselines (paper 001)")
    wsol.add_argument("methods", nargs="+", metavar="METHOD",
                      help="registered methods (or NAME=METHOD, e.g. fix=masker); masks (output range unit) are "
                           "scored as they are, other maps min-max normalised")
    _add_evaluation_options(wsol)
    wsol.add_argument("--boxes", required=True, metavar="FILE", help="their box JSON (e.g. META/val_bboxes.json)")
    wsol.add_argument("--baselines", nargs="*", default=["center", "max", "min", "ground_truth"],
                      choices=["center", "max", "min", "ground_truth"],
                      help="reference rows (default: all four; --baselines alone: none)")
    wsol.add_argument("--openimages", metavar="ROOT",
                      help="add PxAP on the OpenImages test split under ROOT/dataset and ROOT/metadata "
                           "(the wsolevaluation layout; default: no PxAP)")
    wsol.add_argument("--set", type=_method_setting, action="append", default=[], metavar="ROW:KEY=VALUE",
                      help="a row's hyper-parameter, e.g. --set masker:checkpoint=runs/fix (repeatable)")
    wsol.add_argument("--batch-size", type=int, metavar="B", default=32, help="images per batch (default 32)")
    wsol.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    wsol.add_argument("--out", default="runs/wsol", metavar="DIR",
                      help="the engine's folders: OUT/val (and OUT/pxap) with per-image scores; rerun to resume "
                           "(default runs/wsol)")
    wsol.add_argument("--no-progress", action="store_true")
    wsol.add_argument("--paper-quirks", action="store_true",
                      help="the original's arithmetic on real ImageNet boxes: box ends read as half-open, predicted "
                           "boxes one pixel smaller, ground-truth areas not clipped (default: off)")
    wsol.add_argument("--max-box-acc", action="store_true",
                      help="add MaxBoxAcc and MaxBoxAccV2 (IoU 30/50/70, every component's box; Choe et al. 2020) "
                           "over the thresholds 0, 0.01, ..., 0.99 (default: off)")
    wsol.set_defaults(run=_wsol)

    run = bench.add_parser("run", help="score methods and reference masks with registered metrics on a dataset "
                                       "(resumable, shardable; table with 95 %% bootstrap intervals)")
    run.add_argument("rows", nargs="+", metavar="ROW",
                     help="a registered method or reference (zeros, half, ones, ground_truth), or NAME=METHOD to "
                          "name a row, e.g. fix=masker")
    _add_classifier_options(run)
    _add_dataset_options(run)
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (rerun to resume)")
    run.add_argument("--metrics", nargs="+", metavar="METRIC",
                     help="registered metrics (default: every one the dataset supports; see: saliencylab metrics)")
    run.add_argument("--set", type=_method_setting, action="append", default=[], metavar="ROW:KEY=VALUE",
                     help="a row's method hyper-parameter, e.g. --set rise:num_masks=4000 (repeatable)")
    run.add_argument("--subset", type=_row_subset, action="append", default=[], metavar="ROW:N",
                     help="score that row on the first N images only (a slow method's subset)")
    run.add_argument("--targets", default="labels", choices=["labels", "top1", "top3", "top5"],
                     help="explain the ground-truth labels (default) or the top-k predicted classes")
    run.add_argument("--option", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                     help="a metric protocol switch: tolerance=15 (px), boxes_inclusive=false, one_pixel_smaller=true, "
                          "unclipped_area=true, original_protocol=true, explain_short_side=448 (explain at that smaller side, maps "
                          "resized back; paper 002's protocol) (repeatable)")
    run.add_argument("--image-size", type=int, metavar="S",
                     help="resize side (default: the classifier's training size, else 224)")
    run.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per batch file (default 16)")
    run.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/n",
                     help="compute only the batches b with b %% n == i (default 0/1: all)")
    run.add_argument("--seed", type=int, default=0, help="seed of stochastic metrics (default 0)")
    run.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    run.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    run.add_argument("--json", metavar="FILE", help="also copy results.json here")
    run.add_argument("--csv", metavar="FILE", help="also copy results.csv here")
    run.add_argument("--html", metavar="FILE", help="also copy report.html here")
    run.add_argument("--no-progress", action="store_true")
    _add_scale_options(run, precision=False)
    run.set_defaults(run=_bench_run)

    scale = bench.add_parser("scale", help="explain images/s and training samples/s at 1 and 2 processes, the "
                                           "output stores' bytes/map and maps/s, and the cost of ImageNet val")
    scale.add_argument("--processes", type=int, nargs="+", default=[1, 2], metavar="N",
                       help="process counts to measure (default 1 2)")
    scale.add_argument("--strategy", default="ddp_forkserver", metavar="NAME",
                       help="strategy of the runs (default ddp_forkserver: workers fork from a server that imported "
                            "torch once)")
    scale.add_argument("--images", type=int, default=64, metavar="N", help="images explained and trained on (default 64)")
    scale.add_argument("--image-size", type=int, default=64, metavar="S", help="their side (default 64)")
    scale.add_argument("--store-images", type=int, default=32, metavar="N",
                       help="224 px images written to each store (default 32)")
    scale.add_argument("--json", metavar="FILE", help="also write the measurements to this JSON file")
    scale.set_defaults(run=_bench_scale)

    merge = bench.add_parser("merge", help="merge the folders of `bench run --shard i/n` runs into one result")
    merge.add_argument("out", metavar="OUT", help="folder of the merged run (may be one of the shards)")
    merge.add_argument("shards", nargs="+", metavar="SHARD", help="shard folders")
    merge.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    merge.set_defaults(run=_bench_merge)

    reproduce = commands.add_parser("reproduce", help="train what a paper trains on the synthetic data, score it at "
                                    "the paper's settings, check the paper's claims (000 NN-Explainer, 001 masking, "
                                    "002 consistent interpretations, 003 deliberative explanations, 004 in-model "
                                    "explainer)")
    reproduce.add_argument("paper", choices=["000", "001", "002", "003", "004"],
                           help="000: NN-Explainer (at 64 px unless --image-size); 001: masking-based saliency; "
                                "002: consistent interpretations (at 64 px unless --image-size); 003: deliberative "
                                "explanations; 004: in-model explainer-classifier")
    reproduce.add_argument("--out", help="output folder (default runs/reproduce/PAPER)")
    reproduce.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    reproduce.add_argument("--epochs", type=int, help="most classifier epochs (default 15, early stopping ends sooner; "
                           "002: the presets' 15 epochs of every classifier)")
    reproduce.add_argument("--images", type=int, default=50,
                           help="000: test images every compared method is scored on; 004: the images of the AOPC "
                                "curves (default 50)")
    reproduce.add_argument("--phase-epochs", type=_phase_values, metavar="A,B,C",
                           help="004: epochs of the three phases (default: the polygons preset's)")
    reproduce.add_argument("--aopc-grid", choices=["claims", "full"], default="claims",
                           help="004: AOPC for the claims' perturbation and patch only (default), or every "
                                "perturbation and patch size (8 times the AOPC work)")
    reproduce.add_argument("--explainer-epochs", type=int, help="000: most explainer epochs (default: the preset's 30)")
    reproduce.add_argument("--set", action="append", type=_method_setting, default=[], metavar="METHOD:KEY=VALUE",
                           help="000: replace a paper setting (e.g. rise:num_masks=1000); recorded as a deviation")
    reproduce.add_argument("--masker-epochs", type=int, default=20, help="001: epochs of each masker (default 20, "
                           "the synthetic presets')")
    reproduce.add_argument("--hardness-epochs", type=int, default=4,
                           help="003: epochs of the joint classifier + hardness predictor training (default 4)")
    reproduce.add_argument("--hard-images", type=int, default=100,
                           help="003: the K hardest test images explained per row (default 100, the paper's)")
    reproduce.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                           help="002, 003: training seeds; values are mean ± std over them (default 0 1 2)")
    _add_data_options(reproduce)
    reproduce.set_defaults(run=_reproduce, image_size=None)

    commands.add_parser("methods", help="list the attribution methods").set_defaults(run=_methods)
    commands.add_parser("metrics", help="list the metrics").set_defaults(run=_metrics)
    shipped = commands.add_parser("presets", help="list the training presets, or print one (a YAML file to copy)")
    shipped.add_argument("scheme", nargs="?", help="explainer or masker: list only this scheme's presets")
    shipped.add_argument("name", nargs="?", help="print this preset")
    shipped.set_defaults(run=_presets)
    return parser


USER_ERRORS = (ValueError, OSError)
"""What a user's input causes, and so ends a command with exit code 2 and one message (no traceback unless
--debug): ValueError, which saliencylab raises for a value, option, file content or setting that is not what
was expected (its message names the file, field or option and what was expected), and OSError, a file that
is missing or cannot be read or written (permissions, a read-only or full disk). Any other exception
(TypeError, KeyError, RuntimeError, ...) is a bug in saliencylab or a library and keeps its traceback."""

POSITIVE_OPTIONS = ("image_size", "batch_size", "batch", "size", "repeats", "epochs", "images", "slow_images",
                    "masker_epochs", "explainer_epochs", "examples_per_class", "bootstrap", "train", "num_classes")
"""Integer options (dest names) that must be at least 1 when given."""


def _check_options(args: argparse.Namespace) -> None:
    """ValueError for an integer option below 1 or an --out that is not a folder."""
    for name in POSITIVE_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, int) and value < 1:  # (explain's --images is a folder)
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder (new or one this command wrote before)")


def _user_message(error: Exception) -> str:
    """The one-line message of a user error: ours as raised; a system OSError with the file it names."""
    if isinstance(error, OSError) and error.filename is not None:
        files = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 is not None else "")
        hint = {errno.ENOSPC: "; free some space or choose another --out",
                errno.EROFS: "; expected a writable folder: choose another --out",
                errno.EACCES: "; expected a file or folder you may read and write"}.get(error.errno, "")
        return f"{files}: {error.strerror}{hint}"
    return str(error)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Warnings on the command line: one line each, without the source line."""
    print(f"saliencylab: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a command; 0 on success, 2 (with one message on stderr) on a user error (:data:`USER_ERRORS`)."""
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "benchmark", None))))
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            _check_options(args)
            return args.run(args)
        except USER_ERRORS as err:
            if args.debug:
                raise
            print(f"saliencylab {command}: error: {_user_message(err)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
