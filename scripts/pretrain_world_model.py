"""Multi-task world-model pretraining on TD-MPC2-format data (baseline or flow world model).

    python scripts/pretrain_world_model.py alg=pwm_48M task_set=mt30 general.data_dir=<dir>
    torchrun --nproc_per_node=2 scripts/pretrain_world_model.py alg=pwm_48M_flow general.data_dir=<dir>

Writes <run_dir>/checkpoint.pt, the general.checkpoint of train_multitask.py.
"""

import hydra
from omegaconf import DictConfig

from pwm.training.pipelines import run_pretrain


@hydra.main(config_path="cfg", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run_pretrain(cfg)
    status = {True: "converged", False: "NOT converged (cap reached)", None: "convergence unchecked (no held-out data)"}
    print(f"world-model checkpoint: {summary['checkpoint']} ({summary['iterations']} iterations, "
          f"{status[summary['converged']]}, best held-out error {summary['heldout_error']:.4g} "
          f"at iteration {summary['best_iteration']})")


if __name__ == "__main__":
    main()
