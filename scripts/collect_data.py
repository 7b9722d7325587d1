"""Collect episodes with our own agents (or a random policy) into TD-MPC2-format dataset files.

    python scripts/collect_data.py tasks=[walker-walk,cup-catch] task_set=mt30 episodes=20 out_dir=data/mt30
    python scripts/collect_data.py tasks=[walker-walk] policy=checkpoint \
        checkpoints={walker-walk:runs/singletask/walker-walk/pwm_5M/seed0/checkpoint.pt}
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from pwm.data.collect import CollectConfig, collect_dataset, collect_portably, numerics_name
from pwm.training.evaluation import checkpoint_policy


@hydra.main(config_path="cfg", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    settings = OmegaConf.to_container(cfg, resolve=True)
    numerics = numerics_name(settings.pop("portable_numerics"))
    config = CollectConfig(**settings)
    if numerics is not None:
        collect_portably(config, numerics)
        print(f"collected into {cfg.out_dir} ({numerics} numerics)")
        return
    policies = None
    if config.policy == "checkpoint":
        policies = {task: checkpoint_policy(path, config.deterministic) for task, path in (config.checkpoints or {}).items()}
    files = collect_dataset(config, policies)
    print(f"wrote {len(files)} file(s) to {cfg.out_dir}")


if __name__ == "__main__":
    main()
