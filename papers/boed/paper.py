"""BOED's entry in the paper registry (core.registry). Its step and eval functions are built inside each
experiment's sub-trainings (train.py), so none is registered."""

from core.registry import Paper, register
from papers.boed import splits, train
from papers.boed.config import _CONFIGS, BOEDConfig, get_config
from papers.boed.model import build_model

PAPER = register(Paper(
    name="boed", config_cls=BOEDConfig, get_config=get_config, configs=tuple(_CONFIGS),
    build_model=build_model, build_datasets=splits.load_data, train_script="papers/boed/train.py",
    stages=("posterior", "attention"), main=train.main))
