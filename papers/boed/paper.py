"""BOED's entry in the paper registry (core.registry). The registered step and eval functions are those of the
supervision experiment's hard-attention members (supervision.py; by default every member of members(cfg),
no supervision); the design phase and the low-power CNNs build their own inside their experiments."""

from core.registry import Paper, register
from papers.boed import splits, supervision, train
from papers.boed.config import _CONFIGS, BOEDConfig, get_config
from papers.boed.model import build_model

PAPER = register(Paper(
    name="boed", config_cls=BOEDConfig, get_config=get_config, configs=tuple(_CONFIGS),
    build_model=build_model, build_datasets=splits.load_data, train_script="papers/boed/train.py",
    make_step_fn=supervision.make_step_fn, make_eval_fn=supervision.make_eval_fn,
    stages=("posterior", "attention"), main=train.main))
