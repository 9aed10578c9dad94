"""TNet's entry in the paper registry (core.registry)."""

from core.registry import Paper, register
from papers.tnet import train
from papers.tnet.config import CONFIGS, TNetConfig, get_config
from papers.tnet.data import build_datasets
from papers.tnet.evaluate import make_eval_fn
from papers.tnet.model import build_model

PAPER = register(Paper(
    name="tnet", config_cls=TNetConfig, get_config=get_config, configs=tuple(CONFIGS),
    build_model=build_model, build_datasets=build_datasets, train_script="papers/tnet/train.py",
    make_step_fn=train.make_step_fn, make_eval_fn=make_eval_fn, main=train.main))
