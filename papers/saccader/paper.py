"""Saccader's entry in the paper registry (core.registry); DRAM and the CNN baselines are configs of it."""

from core.registry import Paper, register
from papers.saccader import train
from papers.saccader.config import CONFIGS, SaccaderConfig, get_config
from papers.saccader.data import build_datasets
from papers.saccader.evaluate import make_eval_fn
from papers.saccader.model import build_model

PAPER = register(Paper(
    name="saccader", config_cls=SaccaderConfig, get_config=get_config, configs=tuple(CONFIGS),
    build_model=build_model, build_datasets=build_datasets, train_script="papers/saccader/train.py",
    make_step_fn=train.make_step_fn,  # (cfg, stage)
    make_eval_fn=make_eval_fn,  # (cfg, policy names, ...)
    stages=("representation", "location", "policy"), main=train.main))
