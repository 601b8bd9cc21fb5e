"""Strategies by name: the config's `strategy` field picks one."""
from workbench.engine.strategies.base import Strategy
from workbench.engine.strategies.co import CoDistillationStrategy
from workbench.engine.strategies.features import AttentionStrategy, HiddenStateStrategy
from workbench.engine.strategies.hard import HardLabelStrategy
from workbench.engine.strategies.on_policy import OnPolicyStrategy
from workbench.engine.strategies.soft import SoftLabelStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (SoftLabelStrategy, HardLabelStrategy, CoDistillationStrategy, HiddenStateStrategy,
                              AttentionStrategy, OnPolicyStrategy)}


def strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy {name!r} is not available; allowed: {', '.join(STRATEGIES)}") from None
