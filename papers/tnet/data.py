"""TNet's datasets, shared by train.py and evaluate.py: the CPU canvases (real MNIST digits) and, at paper
scale, ImageNet or fMoW through the official input pipeline (preprocess.py)."""

from core.data import DigitCanvas, build_dataset, list_datasets, made_splits
from core.data.transforms import to_signed
from core.errors import UserError
from papers.tnet import preprocess
from papers.tnet.config import TNetConfig


def build_datasets(cfg: TNetConfig):
    """(train, eval) datasets yielding (image (C, image_size, image_size) in [-1, 1], label).

    "digits": the CPU task, real MNIST digits (core.data.DigitCanvas) on a black canvas; training
    canvases depend on the seed, the test canvases (held-out digits) are the same for every run; the same
    for a made dataset registered in core.data (e.g. "cluttered-mnist") at image_size px.
    `standardize_images`: both made sets shifted and scaled by the training pixels' mean and std.
    Anything else is a hub id or local folder read by core.data.build_dataset (ImageNet, fMoW) with the
    augmentation of B.2 for training.
    """
    if cfg.dataset == "digits":
        kw = dict(canvas=cfg.image_size, scale_range=cfg.digit_scale, num_clutter=cfg.num_clutter,
                  clutter_size=cfg.clutter_size, channels=cfg.channels, transform=to_signed)
        return made_splits(lambda split, n, seed: DigitCanvas(split, n, seed=seed, **kw), cfg.train_size,
                           cfg.eval_size, cfg.seed, cfg.standardize_images)
    if cfg.dataset in list_datasets():  # a made task of core.data, e.g. the cross-paper same-footing task
        kw = dict(canvas=cfg.image_size, channels=cfg.channels, transform=to_signed)
        return made_splits(lambda split, n, seed: build_dataset(cfg.dataset, split, n=n, seed=seed, **kw),
                           cfg.train_size, cfg.eval_size, cfg.seed, cfg.standardize_images)
    if cfg.standardize_images:
        raise UserError(f"standardize_images applies to the made tasks only, not to dataset {cfg.dataset!r} "
                        "(paper scale keeps the official input pipeline)")
    # Paper scale: the official input pipeline (papers/tnet/preprocess.py, input_imagenet.py).
    kw = dict(channels=cfg.channels, num_classes=cfg.num_classes)
    eval_tf = preprocess.EvalTransform(cfg.image_size)
    eval_set = build_dataset(cfg.dataset, cfg.eval_split, transform=eval_tf, **kw)
    if not cfg.augment:
        return build_dataset(cfg.dataset, cfg.train_split, transform=eval_tf, **kw), eval_set
    boxes = preprocess.read_boxes(cfg.dataset, cfg.train_split)  # fMoW: the crop covers >= 10% of a box
    if boxes:
        train_set = build_dataset(cfg.dataset, cfg.train_split, **kw)
        return preprocess.BoxedTrainSet(train_set, boxes, preprocess.TrainTransform(cfg.image_size)), eval_set
    return build_dataset(cfg.dataset, cfg.train_split, transform=preprocess.TrainTransform(cfg.image_size),
                         **kw), eval_set
