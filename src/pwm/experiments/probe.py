"""Does the policy exploit its world model? Real rewards of a trained policy's episodes next to the
model's predictions for them (:func:`pwm.algorithms.diagnostics.imagination_gap`).

    python -m pwm.experiments.probe runs/ab/runs/walker-stand/default/baseline/seed0/checkpoint.pt --steps 60

The episodes are the checkpoint's evaluation episodes (deterministic policy, the evaluation reset
seeds of its training seed). Per printed step: the real reward, the reward head at the real state,
the reward along the model's open-loop rollout under the real actions, and the reward the model
predicts when the policy acts on the model's own latents. A closed-loop imagined reward far above
the real one is a policy that found actions the model overrates. Per episode it also prints the
share of saturated actions and the action's spread: a policy stuck at the bounds of its tanh (100%,
spread ~0) gets no gradient and no exploration from its noise (see ``alg.actor_entropy_coef``).
"""

from __future__ import annotations

import argparse

import torch

from pwm.algorithms.diagnostics import imagination_gap
from pwm.algorithms.pwm import SATURATED_ACTION
from pwm.envs.rollout import EVAL_SEED_OFFSET, run_episode
from pwm.training.evaluation import agent_policy, load_agent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint.pt of a policy run (A/B, train_singletask, train_multitask)")
    parser.add_argument("--episodes", type=int, default=2, help="evaluation episodes to probe")
    parser.add_argument("--steps", type=int, default=60, help="steps compared per episode")
    parser.add_argument("--every", type=int, default=6, help="print every k-th step")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=1)
    cli = parser.parse_args(argv)
    if min(cli.episodes, cli.steps, cli.every, cli.threads) < 1:
        parser.error("--episodes, --steps, --every and --threads must be >= 1")
    torch.set_num_threads(cli.threads)
    trained = load_agent(cli.checkpoint, device="cpu")
    agent = trained.agent
    seed = cli.seed if cli.seed is not None else (trained.seed or 0)
    env = trained.make_env(seed + EVAL_SEED_OFFSET)
    task = None if trained.task_id is None else torch.tensor([trained.task_id])

    policy = agent_policy(agent, trained.task_id, deterministic=True)
    print(f"{trained.task} {trained.variant} ({cli.checkpoint})")
    means = {"real": [], "one_step": [], "open_loop": [], "imagined_policy": []}
    for i in range(cli.episodes):
        episode = run_episode(env, policy, seed=EVAL_SEED_OFFSET + seed + i)
        steps = min(cli.steps, episode.action.shape[0] - 1)
        real = episode.reward[1:steps + 1]
        gap = imagination_gap(agent.wm, lambda z: agent.act_latent(z, task, deterministic=True),
                              episode.obs, episode.action[1:], steps, task)
        actions = episode.action[1:]
        saturated = float((actions.abs() > SATURATED_ACTION).float().mean())
        print(f"\nepisode {i} (reset seed {EVAL_SEED_OFFSET + seed + i}): return {float(episode.reward[1:].sum()):.1f}, "
              f"saturated actions {saturated:.0%} (|a| > {SATURATED_ACTION}), action std over the episode "
              + " ".join(f"{value:.3f}" for value in actions.std(dim=0).tolist()))
        print(f"{'step':>6}{'real':>9}{'one-step':>10}{'open-loop':>11}{'imagined policy':>17}")
        for t in range(0, steps, cli.every):
            print(f"{t:>6}{real[t]:>9.3f}{gap['one_step'][t]:>10.3f}{gap['open_loop'][t]:>11.3f}"
                  f"{gap['imagined_policy'][t]:>17.3f}")
        means["real"].append(float(real.mean()))
        for key in ("one_step", "open_loop", "imagined_policy"):
            means[key].append(float(gap[key].mean()))
    print("\nmean reward per step over the probed steps: " + ", ".join(
        f"{key.replace('_', ' ')} {sum(values) / len(values):.3f}" for key, values in means.items()))
    env.close()


if __name__ == "__main__":
    main()
