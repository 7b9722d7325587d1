"""How well can each dynamics form fit one-step transitions of a trained encoder's latents?

    python results/study_pwm_objective/followups/detach_velocity_target/fit_check.py <checkpoint.pt> <data_dir> [--steps 3000]

The encoder of ``checkpoint.pt`` is frozen. Two fresh MLPs of the study's widths (128x128) are trained
on its latents of ``data_dir``'s training windows, side by side on the same batches:

* flow: a velocity field ``v([z_tau, a, tau])`` trained by flow matching towards ``z' - z`` and
  integrated with 4 midpoint Euler steps (FlowWorldModel's form);
* direct: ``SimNorm(f([z, a]))`` trained by MSE to ``z'`` (the baseline's form).

It prints both losses and both one-step errors on held-out windows, normalised by the targets'
variance (1 = no better than their mean; copying ``z`` scores about 0.67 on cheetah-run). A scratch
measurement for ``../README.md``, not part of the package.
"""

from __future__ import annotations

import argparse

import torch

from pwm.data.tdmpc2_format import load_dataset
from pwm.models.layers import SimNorm, init_weights, mlp
from pwm.training.evaluation import load_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("data_dir")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--euler-steps", type=int, default=4)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    wm = load_agent(cli.checkpoint, device="cpu").agent.wm.eval()
    buffer = load_dataset(cli.data_dir, 16, num_tasks=1, heldout_fraction=0.1)
    generator = torch.Generator().manual_seed(0)

    def batch(split: str, size: int = 256):
        sample = buffer.sample(size, generator, split=split)
        with torch.no_grad():
            return wm.encode(sample.obs[0]), wm.encode(sample.obs[1]), sample.action[0]

    latent_dim, act_dim, units = wm.latent_dim, wm.act_dim, [128, 128]
    velocity = mlp(latent_dim + act_dim + 1, units, latent_dim)
    direct = mlp(latent_dim + act_dim, units, latent_dim)
    velocity.apply(init_weights)
    direct.apply(init_weights)
    simnorm = SimNorm(wm.simnorm_dim)
    optimizers = [torch.optim.Adam(velocity.parameters(), 3e-4), torch.optim.Adam(direct.parameters(), 3e-4)]
    z_held, target_held, action_held = batch("heldout", 1024)
    target_var = target_held.var(0, unbiased=False).mean()

    def heldout_nmse() -> tuple[float, float]:
        with torch.no_grad():
            z, dt = z_held, 1.0 / cli.euler_steps
            for k in range(cli.euler_steps):
                t = torch.full((z.shape[0], 1), (k + 0.5) * dt)
                z = z + dt * velocity(torch.cat([z, action_held, t], -1))
            direct_next = simnorm(direct(torch.cat([z_held, action_held], -1)))
        return (float(((z - target_held) ** 2).mean() / target_var),
                float(((direct_next - target_held) ** 2).mean() / target_var))

    print(f"copying z: held-out nmse {float(((z_held - target_held) ** 2).mean() / target_var):.3f}")
    for step in range(cli.steps):
        z, target, action = batch("train")
        tau = torch.rand(z.shape[0], 1)
        flow_loss = ((velocity(torch.cat([(1 - tau) * z + tau * target, action, tau], -1)) - (target - z)) ** 2).mean()
        direct_loss = ((simnorm(direct(torch.cat([z, action], -1))) - target) ** 2).mean()
        for optimizer, loss in zip(optimizers, (flow_loss, direct_loss)):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step % 500 == 0 or step == cli.steps - 1:
            flow_nmse, direct_nmse = heldout_nmse()
            print(f"step {step:>5}: FM loss {flow_loss.item():.6f}  direct MSE {direct_loss.item():.6f}  "
                  f"held-out nmse flow {flow_nmse:.3f}  direct {direct_nmse:.3f}", flush=True)


if __name__ == "__main__":
    main()
