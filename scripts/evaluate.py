"""Evaluate saved policies: per-task reward, success and episode length, TD-MPC2's normalised score,
and the published PWM / TD-MPC2 numbers for the same tasks.

    python scripts/evaluate.py checkpoint=runs/singletask/cartpole-balance/pwm_small/seed0/checkpoint.pt
    python scripts/evaluate.py checkpoint=runs/multitask/mt30 task_set=mt30 episodes=10
    python scripts/evaluate.py checkpoint=<ckpt> video.episodes=1     # GIF of the first episode

Writes <out_dir>/evaluation.csv and evaluation.md (and videos/) and prints the table.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from pwm.experiments.evaluate import EvaluateConfig, evaluate_checkpoints, render_markdown, write_evaluation
from pwm.utils.common import set_threads


@hydra.main(config_path="cfg", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    set_threads(cfg.threads)
    options = OmegaConf.to_container(cfg, resolve=True)
    options.pop("threads")
    config = EvaluateConfig(**options)
    frame = evaluate_checkpoints(config)
    csv_path, _ = write_evaluation(frame, config)
    print(render_markdown(frame, config))
    print(f"written: {csv_path} and evaluation.md")


if __name__ == "__main__":
    main()
