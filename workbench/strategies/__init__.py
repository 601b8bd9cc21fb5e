"""Strategies by name: the config's `strategy` field picks one."""
from workbench.strategies.base import Strategy
from workbench.strategies.co import CoDistillationStrategy
from workbench.strategies.features import AttentionStrategy, HiddenStateStrategy
from workbench.strategies.hard import HardLabelStrategy
from workbench.strategies.soft import SoftLabelStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (SoftLabelStrategy, HardLabelStrategy, CoDistillationStrategy, HiddenStateStrategy,
                              AttentionStrategy)}


def strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy {name!r} is not available; allowed: {', '.join(STRATEGIES)}") from None
