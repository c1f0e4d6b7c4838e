"""Method dispatch: one model builder, objective and cost table per method of scaling.config.METHODS;
a method that slipped past RunConfig's checks is refused by every builder, never built as another method."""
import dataclasses

import pytest

from scaling.config import METHODS, ConfigError, RunConfig
from scaling.describe import COSTS, PARTS, describe
from scaling.models import MODEL_BUILDERS, build_model
from scaling.objectives import OBJECTIVES, Objective, build_objective

TINY = ["steps=1", "global_batch=2", "micro_batch=2", "size=nano", "data.train_size=8", "dino.out_dim=64",
        "dino.hidden_dim=32", "dino.bottleneck_dim=16", "dino.local_crops=2", "data.vocab_size=64"]


def _slipped(cfg: RunConfig, method: str) -> RunConfig:
    """`cfg` with `method` set past __post_init__'s check (object.__setattr__ on the frozen dataclass)."""
    cfg = dataclasses.replace(cfg)
    object.__setattr__(cfg, "method", method)
    return cfg


def test_every_table_has_exactly_the_configs_methods():
    assert tuple(MODEL_BUILDERS) == tuple(OBJECTIVES) == tuple(COSTS) == tuple(PARTS) == METHODS


@pytest.mark.parametrize("method", ["clip", "VATT", ""])
def test_a_method_that_slipped_past_the_config_is_refused_by_every_builder(method):
    cfg = _slipped(RunConfig.load(None, TINY + ["method=dino"]), method)
    for build in (build_model, build_objective, describe):
        with pytest.raises(ConfigError, match=r"method: got .*; allowed values: 'vatt', 'dino', 'simclr'") as err:
            build(cfg)
        assert err.value.field == "method"


def test_replace_still_checks_the_method():
    with pytest.raises(ConfigError, match="method"):
        dataclasses.replace(RunConfig.load(None, TINY), method="clip")


@pytest.mark.parametrize("method", METHODS)
def test_each_methods_objective_satisfies_the_protocol(method):
    cfg = RunConfig.load(None, TINY + [f"method={method}"])
    objective = build_objective(cfg)
    assert isinstance(objective, OBJECTIVES[method]) and isinstance(objective, Objective)
    assert type(build_model(cfg)).__name__.lower() == method
