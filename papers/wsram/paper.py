"""WS-RAM's entries in the paper registry (core.registry): digits (§5.1) and captions (§5.2)."""

from core.registry import Paper, register
from papers.wsram import config, train
from papers.wsram.captions import config as caption_config
from papers.wsram.captions import evaluate as caption_evaluate
from papers.wsram.captions import model as caption_model
from papers.wsram.captions import train as caption_train
from papers.wsram.model import build_model

PAPER = register(Paper(
    name="wsram", config_cls=config.WSRAMConfig, get_config=config.get_config,
    configs=tuple(config._CONFIGS), build_model=build_model, build_datasets=train.build_datasets,
    train_script="papers/wsram/train.py",
    make_step_fn=train.make_step_fn,  # (cfg, Probes(cfg, train_set))
    make_eval_fn=train.make_eval_fn, main=train.main))

CAPTIONS = register(Paper(
    name="wsram-captions", config_cls=caption_config.CaptionConfig, get_config=caption_config.get_config,
    configs=tuple(caption_config._CONFIGS), build_model=caption_model.build_model,
    build_datasets=caption_evaluate.make_datasets, train_script="papers/wsram/captions/train.py",
    make_step_fn=caption_train.make_step_fn,  # (cfg, probe)
    make_eval_fn=caption_train.make_eval_fn, main=caption_train.main))
