"""A sweeper that launches fixed batches one after another, as Optuna and its kind do (`hydra/sweeper=walk
hydra.sweeper.batches=[[64,128],[128,256]]`), and prints what each job returned (tests of the launchers)."""
from dataclasses import dataclass, field
from typing import Any, List

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


@dataclass
class WalkSweeperConf:
    _target_: str = "hydra_plugins.walk_sweeper.walk.WalkSweeper"
    key: str = "batch_size"
    batches: List[Any] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="walk", node=WalkSweeperConf)


class WalkSweeper(Sweeper):
    def __init__(self, key: str, batches: List[Any]) -> None:
        self.key, self.batches = key, batches

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        num = 0
        for b, batch in enumerate(self.batches):
            returns = self.launcher.launch([[f"{self.key}={v}", *arguments] for v in batch], initial_job_idx=num)
            num += len(returns)
            for r in returns:
                try:
                    value = repr(r.return_value)
                except Exception as e:  # a failed job's return raises what failed it
                    value = f"raised {type(e).__name__}"
                print(f"walk {b}: {' '.join(r.overrides)} -> {r.status.name} {value} in {r.working_dir}", flush=True)
