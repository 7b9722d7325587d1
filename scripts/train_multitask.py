"""Per-task policy extraction from a pretrained multi-task world model (design spec section 14).

    python scripts/train_multitask.py -cn config_mt30 alg=pwm_48M task=<task> \
        general.data_dir=<dir> general.checkpoint=<wm_ckpt>
    python scripts/train_multitask.py -cn config_mt30 alg=pwm_48M_flow task=<task> \
        general.data_dir=<dir> general.checkpoint=<wm_ckpt>

Evaluates in the real environment and appends a row to general.results_csv.
"""

import hydra
from omegaconf import DictConfig

from pwm.training.pipelines import run_policy_extraction


@hydra.main(config_path="cfg", config_name="config_mt30", version_base="1.3")
def main(cfg: DictConfig) -> float:
    summary = run_policy_extraction(cfg)
    print(f"{cfg.task}: final reward {summary['final_reward']:.2f}, success {summary['final_success']:.2f}; "
          f"results in {cfg.general.results_csv}")
    return summary["final_reward"]


if __name__ == "__main__":
    main()
