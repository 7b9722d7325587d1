"""A/B comparison of flow-matching vs MLP latent dynamics (design spec sections 7-9, 15).

    python scripts/ab_compare.py -m                      # default: both variants x 2 seeds on cartpole-balance
    python scripts/ab_compare.py -m task=walker-walk,cheetah-run seed=0,1,2 alg=pwm_5M,pwm_5M_flow
    python scripts/ab_compare.py -m +sweep=integrate_steps           # spec section 9 presets
    python scripts/ab_compare.py -m hydra/launcher=slurm hydra.launcher.partition=<p>   # on a cluster
    python scripts/ab_compare.py -m status_only=true hydra/launcher=basic ...   # what is done, what is left

Each job is one (task, seed, variant); the report (report.md, PNGs, verdict) is rebuilt over all runs
under general.root when the (multi)run ends. Rebuild it alone with scripts/ab_report.py.
"""

from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pwm.experiments.ab import ab_job_status, run_ab_job
from pwm.experiments.status import measured_rates, status_line

_RATES: dict[str, Any] = {}  # status_only: the rates of a root, measured once for all of a sweep's jobs


@hydra.main(config_path="cfg", config_name="ab", version_base="1.3")
def main(cfg: DictConfig) -> float | dict[str, Any]:
    if cfg.status_only:
        hydra_cfg = HydraConfig.get()
        launcher = hydra_cfg.launcher._target_
        # the totals are gathered in the launching process, which joblib's or SLURM's jobs are not run in
        if hydra_cfg.mode == RunMode.MULTIRUN and not launcher.endswith("BasicLauncher"):
            raise ValueError(f"status_only=true needs hydra/launcher=basic (the jobs only read their folders), "
                             f"got {launcher}")
        root = str(cfg.general.root)
        if root not in _RATES:
            _RATES[root] = measured_rates(root)
        status = ab_job_status(cfg, _RATES[root])
        print(status_line(status))
        return status.as_dict()
    summary = run_ab_job(cfg)
    policies = summary.get("policy_final_rewards", [summary["final_reward"]])
    each = f" (last evaluation of each of its {len(policies)} policies: {', '.join(f'{r:.2f}' for r in policies)})"
    print(f"{cfg.task} {summary['variant']} seed {cfg.seed}: final reward {sum(policies) / len(policies):.2f}"
          f"{each if len(policies) > 1 else ''}")
    return sum(policies) / len(policies)


if __name__ == "__main__":
    main()
