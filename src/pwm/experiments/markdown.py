"""The report as markdown (``report.md``)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pwm.experiments.runs import HELDOUT_TREND_ITERATIONS, parse_policy_rewards
from pwm.experiments.statistics import variance_components


def _half_budget(group: pd.DataFrame) -> str:
    """The half-budget checks of a group's runs: ``0.0831 -> 0.0680 (-18%, seed 0)`` each; ``-`` if none."""
    checked = group[group.half_budget_drop.notna()]
    return "; ".join(f"{row.half_budget_heldout_error_final:.4g} -> {row.heldout_error_final:.4g} "
                     f"({-row.half_budget_drop:+.0%}, seed {row.seed})" for row in checked.itertuples()) or "-"


def _convergence(group: pd.DataFrame) -> str:
    """A group's runs by their ``convergence`` judgement (:func:`pwm.experiments.verdict.convergence_judgements`):
    ``not converged: seed 0`` each, ``; ``-joined; ``unchecked`` if none was judged."""
    judged = group[group.convergence.notna()].sort_values("seed")
    seeds = judged.groupby("convergence", sort=False).seed.apply(lambda s: ", ".join(str(seed) for seed in s))
    return "; ".join(f"{judgement}: seed {seed_list}" for judgement, seed_list in seeds.items()) or "unchecked"


def _trend(trends: pd.Series) -> str:
    """Mean and range of :func:`~pwm.experiments.runs.heldout_trend` values as signed percentages."""
    trends = trends.dropna()
    if trends.empty:
        return "n/a"
    if len(trends) == 1:
        return f"{100 * trends.iloc[0]:+.0f}%"
    return f"{100 * trends.mean():+.0f}% [{100 * trends.min():+.0f}, {100 * trends.max():+.0f}]"


def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if value != 0 and abs(value) < 10.0**-digits:
        return f"{value:.3g}"  # small diagnostics (e.g. grad-norm variances) keep their magnitude
    return f"{value:,.{digits}f}"


def _diff(d: dict[str, float]) -> str:
    if d["pairs"] >= 2:
        return f"{_fmt(d['mean_diff'], 1)} [{_fmt(d['ci_low'], 1)}, {_fmt(d['ci_high'], 1)}]"
    return f"{_fmt(d['mean_diff'], 1)} (1 seed)"


def _settings_side_by_side(report: dict[str, Any], table: pd.DataFrame) -> list[str]:
    """Per task, every (setting, variant) run on it in one table: the spec section 9 sweeps at a glance.

    Only tasks run under more than the one baseline / flow pair are listed.
    """
    bars = report.get("learned_bars", {})
    tasks = [task for task, rows in table.groupby("task") if len(rows.groupby(["setting", "variant"])) > 2]
    if not tasks:
        return []
    lines = ["", "## Settings side by side (sweeps)", "",
             "Every setting and variant run on a task, unpaired: final reward (mean ± std over seeds), how many "
             "seeds beat the random policy by the verdicts' margin, the stability signals (ESNR, actor grad-norm "
             "coefficient of variation, skipped non-finite updates) and the cost (world-model update, whole run "
             "with pretraining). A flow variant's knobs are in its name (`flow-K<integrate_steps>-<tau sampling>`); "
             "a setting names what differs from the default run (for example `alg.horizon=10`, "
             "`train.train_world_model=true`).", "",
             "| task | setting | variant | seeds | final reward | learned | ESNR | actor grad-norm CV "
             "| skipped updates | WM update ms | run s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        rows = table[table.task == task]
        order = sorted(rows.groupby(["setting", "variant"]).groups,
                       key=lambda key: (key[0] != "default", key[0], key[1] != "baseline", key[1]))
        for setting, variant in order:
            group = rows[(rows.setting == setting) & (rows.variant == variant)]
            bar = bars.get(task, float("nan"))
            learned = f"{int((group.final_reward >= bar).sum())}/{len(group)}"
            lines.append(f"| {task} | {setting} | {variant} | {len(group)} | {_fmt(group.final_reward.mean(), 1)} ± "
                         f"{_fmt(group.final_reward.std(ddof=0), 1)} | {learned} | {_fmt(group.esnr_mean.mean(), 3)} "
                         f"| {_fmt(group.actor_grad_norm_cv.mean(), 3)} | {_fmt(group.nan_skipped.sum(), 0)} "
                         f"| {_fmt(1000 * group.wm_update_s.mean(), 1)} | {_fmt(group.wall_s.mean(), 0)} |")
    return lines


def _spread_sources(table: pd.DataFrame) -> list[str]:
    """The section splitting each variant's spread of final rewards between world models and policy seeds
    (:func:`~pwm.experiments.statistics.variance_components`); empty unless some run has several policies."""
    if "policy_rewards" not in table:
        return []
    groups = [(key, group, [parse_policy_rewards(cell) for cell in group.sort_values("seed").policy_rewards])
              for key, group in table.groupby(["task", "setting", "variant"])]
    groups = [(key, group, rewards) for key, group, rewards in groups if max(map(len, rewards), default=0) >= 2]
    if not groups:
        return []
    lines = ["", "## Where the spread comes from: world models and policy seeds", "",
             "Each run's final reward is the mean over the policies extracted from its world model "
             "(`train.policy_seeds`). A variant's confidence intervals see the std over runs of those means, whose "
             "square is the world models' variance plus the policy seeds' divided by the policies per run. "
             "Policy-seed std: the pooled std of one world model's policies; world-model std: the rest "
             "(estimated, one-way random effects). A policy-seed share near 1 says more policies per world model "
             "narrow the intervals cheaply (a policy costs minutes, a world model up to hours); near 0, only more "
             "seeds do.", "",
             "| task | setting | variant | runs | each run's policies (by seed) | std over runs | policy-seed std "
             "| world-model std | policy-seed share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (task, setting, variant), group, rewards in groups:
        spread = variance_components(rewards)
        policies = " · ".join(" / ".join(f"{reward:.0f}" for reward in run) for run in rewards)
        share = spread["policy_share"]
        lines.append(f"| {task} | {setting} | {variant} | {len(group)} | {policies} "
                     f"| {_fmt(spread['run_mean_std'], 1)} | {_fmt(spread['policy_std'], 1)} "
                     f"| {_fmt(spread['world_model_std'], 1)} "
                     f"| {f'{share:.0%}' if math.isfinite(share) else 'n/a'} |")
    return lines


def render_markdown(report: dict[str, Any], parity_table: pd.DataFrame, table: pd.DataFrame) -> str:
    crit = report["criteria"]
    lines = ["# A/B report: flow-matching vs MLP latent dynamics", "",
             f"{report['runs']} runs under `{report['root']}`. Rewards are deterministic-policy evaluation episode "
             f"returns; a run's reward is the mean of its last {crit['final_evals']} evaluations. Runs are paired "
             "by seed. **Equal wall-clock** (the primary comparison, spec section 15's equal compute): each pair "
             "is compared at the shorter of its two runs' durations, world-model pretraining included; "
             "**equal iterations**: at the end of both runs. Per task, a paired-seed "
             f"{int(100 * crit['confidence'])}% t interval of flow - baseline decides: flow or baseline when it "
             f"excludes 0 and the difference exceeds {100 * crit['tie_tolerance']:g}% of the task's reward scale, "
             "tie when it lies within that tolerance, else inconclusive. Thresholds are fixed per task "
             "(fractions of TD-MPC2's published reward where one exists) and count once held for "
             f"{crit['hold_evals']} consecutive evaluations.", ""]
    if "policies" in table and table.policies.max() > 1:
        counts = ", ".join(str(int(n)) for n in sorted(table.policies.unique()))
        lines += [f"Each run's evaluations are the mean over the policies extracted from its world model "
                  f"(train.policy_seeds; {counts} per run here), on the same initial states: a seed's reward is its "
                  "world model's, not one policy seed's draw.", ""]
    if "commit" in table:
        commits = sorted({str(c) for c in table.commit.dropna()})
        lines += [f"Runs made at commit {', '.join(f'`{c}`' for c in commits) or 'unknown (not recorded)'}.", ""]
    lines += ["## Verdicts", ""]
    for c in report["comparisons"]:
        lines.append(f"### {c['flow_variant']} vs baseline [{c['setting']}, {c['model']}]: **{c['verdict'].upper()}**")
        lines.append("")
        for reason in c.get("invalid_reasons", []):
            lines.append(f"- INVALID: {reason}")
        for note in c.get("runs_below_random_bar", []):
            lines.append(f"- note, single run: {note}")
        if c.get("unpaired_runs"):
            lines.append(f"- not compared (no run of the other variant with the same seed): "
                         f"{', '.join(c['unpaired_runs'])}")
        for name, criterion in c.get("criteria", {}).items():
            lines.append(f"- {criterion['status'].upper()} `{name}`: {criterion['detail']}")
        if c.get("seeds_used", 0) and c["seeds_used"] < 3:
            lines.append(f"- note: {c['seeds_used']} seed(s) per task; confidence intervals are wide, "
                         "treat this verdict as preliminary")
        lines.append("")
    lines += ["## Parity", "", "| setting | variant | runs | WM params | vs baseline | actor params | critic params "
              "| WM update ms | vs baseline | actor update ms | pretrain s | policy s | total s | vs baseline |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in parity_table.iterrows():
        lines.append(f"| {r.setting} | {r.variant} | {r.runs} | {int(r.params_world_model):,} | "
                     f"{_fmt(r.params_world_model_vs_baseline, 4)} | {int(r.params_actor):,} | {int(r.params_critic):,} | "
                     f"{_fmt(r.wm_update_ms)} | {_fmt(r.wm_update_ms_vs_baseline)} | {_fmt(r.actor_update_ms)} | "
                     f"{_fmt(r.pretrain_s, 1)} | {_fmt(r.policy_s, 1)} | {_fmt(r.wall_s, 1)} | {_fmt(r.wall_s_vs_baseline)} |")
    for c in report["comparisons"]:
        if not c["tasks"] or "iqm" not in c:
            continue
        names = [f"{int(q * 100)}%" for q in report["thresholds"]]
        lines += ["", f"## Results: {c['flow_variant']} vs baseline [{c['setting']}, {c['model']}]", "",
                  "| task | random policy | equal wall-clock: budget s | baseline | flow | flow - baseline | outcome "
                  "| equal iterations: baseline | flow | flow - baseline | outcome | learned (b / f) "
                  "| WM pretraining iterations (b / f) | WM pretraining s (b / f) | thresholds | "
                  + " | ".join(f"time to {n} (b / f), s" for n in names) + " |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(names)]
        for t in c["per_task"]:
            times = " | ".join(f"{_fmt(t[f'baseline_time_to_{n}'], 1)} / {_fmt(t[f'flow_time_to_{n}'], 1)}" for n in names)
            learned = " / ".join("yes" if t[f"{k}_learned"] else "**no**" for k in ("baseline", "flow"))
            targets = ", ".join(f"{n} = {_fmt(v, 1)}" for n, v in t["targets"].items())
            lines.append(f"| {t['task']} | {_fmt(t['random_reward'])} (+{_fmt(t['learned_margin'])} to count) "
                         f"| {_fmt(t['wall_budget_s'], 1)} | {_fmt(t['baseline_reward_wall'])} | {_fmt(t['flow_reward_wall'])} "
                         f"| {_diff(t['diff_wall'])} | **{t['outcome_wall']}** "
                         f"| {_fmt(t['baseline_reward'])} ± {_fmt(t['baseline_reward_std'])} "
                         f"| {_fmt(t['flow_reward'])} ± {_fmt(t['flow_reward_std'])} | {_diff(t['diff_iterations'])} "
                         f"| {t['outcome_iterations']} | {learned} "
                         f"| {_fmt(t['baseline_pretrain_iterations'], 0)} / {_fmt(t['flow_pretrain_iterations'], 0)} "
                         f"| {_fmt(t['baseline_pretrain_s'], 1)} / {_fmt(t['flow_pretrain_s'], 1)} "
                         f"| {targets} ({t['threshold_source']}) | {times} |")
        lines += ["", "Aggregate over tasks (reward above the random policy's, as a fraction of each task's reward "
                  f"scale; {c['seeds_used']} seed(s) per task; 95% stratified-bootstrap CIs, rliable):", "",
                  "| comparison | IQM baseline | IQM flow | P(flow > baseline) |", "|---|---|---|---|"]
        for label, suffix in (("equal wall-clock", "_wall"), ("equal iterations", "")):
            iqm, poi = c.get(f"iqm{suffix}"), c.get(f"probability_of_improvement{suffix}")
            if iqm is None or poi is None:
                continue
            cells = [f"{_fmt(iqm[k]['iqm'], 3)} [{_fmt(iqm[k]['ci_low'], 3)}, {_fmt(iqm[k]['ci_high'], 3)}]"
                     for k in ("baseline", "flow")]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | "
                         f"{_fmt(poi['p'], 3)} [{_fmt(poi['ci_low'], 3)}, {_fmt(poi['ci_high'], 3)}] |")
        lines += ["", "Stability (mean over runs; the grad-norm coefficient of variation is scale-free, the variance "
                  "is shown for reference):", "",
                  "| variant | actor grad-norm CV | actor grad-norm var | critic grad-norm var | ESNR "
                  "| skipped non-finite updates | max latent norm | mean latent norm | non-finite latents |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key in ("baseline", "flow"):
            s = c["stability"][key]
            lines.append(f"| {key} | {_fmt(s['actor_grad_norm_cv'], 3)} | {_fmt(s['actor_grad_norm_var'], 6)} "
                         f"| {_fmt(s['critic_grad_norm_var'], 4)} | "
                         f"{_fmt(s['esnr_mean'], 4)} | {_fmt(s['nan_skipped'], 0)} | {_fmt(s['latent_norm_max'], 3)} | "
                         f"{_fmt(s['latent_norm_mean'], 3)} | {_fmt(s['nonfinite_latents'], 0)} |")
    if report.get("published"):
        lines += ["", "## Next to published numbers", "",
                  "Ours: mean ± std over seeds of the final reward (mean of the last evaluations), every setting and "
                  "variant run. Published: TD-MPC2's released single-task learning curves (state observations, 3 seeds; "
                  "its last step) and PWM's MT30 / MT80 per-task results (48M multi-task world model pretrained on "
                  "TD-MPC2's offline datasets); both re-tabulated in `benchmarks/reference/`. Ours run at a far "
                  "smaller scale (see the model column of the verdicts), so they are context, not a target.", "",
                  "| task | setting | variant | seeds | ours | TD-MPC2 | PWM MT30 | PWM MT80 |",
                  "|---|---|---|---|---|---|---|---|"]
        for (task, setting, variant), group in table.groupby(["task", "setting", "variant"]):
            pub = report["published"].get(task, {})
            tdmpc2 = (f"{_fmt(pub['tdmpc2_reward'], 1)} @ {pub['tdmpc2_step'] / 1e6:g}M steps"
                      if pub.get("tdmpc2_reward") is not None else "n/a")
            pwm = [_fmt(pub[k], 1) if pub.get(k) is not None else "n/a" for k in ("pwm_mt30_reward", "pwm_mt80_reward")]
            lines.append(f"| {task} | {setting} | {variant} | {len(group)} | {_fmt(group.final_reward.mean(), 1)} ± "
                         f"{_fmt(group.final_reward.std(ddof=0), 1)} | {tdmpc2} | {pwm[0]} | {pwm[1]} |")
    lines += _settings_side_by_side(report, table)
    lines += ["", "## World-model quality (held-out windows, the pretraining evaluation that was kept)", "",
              "Both dynamics are scored on one yardstick: open-loop latent rollouts under the data's actions "
              "against the encoder's latents of the observed states (errors normalised by the targets' spread: "
              "1 = no better than the batch mean), and rewards predicted along them. Latent spread: the mean "
              "per-dimension standard deviation of the encoder's latents across the held-out batch, at the first "
              "evaluation and at the kept one; a spread that shrinks while the errors stay high is a "
              "representation collapsing, not a model getting better. vs copy: the 1-step error over the distance "
              "the encoder's latent really moved (1 = no better than predicting that nothing moves), and in "
              "brackets the normalised 1-step error that copy prediction scores: an encoder whose latents barely "
              "move between steps makes any model's normalised error small. Trend: how fast the held-out error was "
              "still changing when pretraining ended, per 1,000 iterations (a line fitted to its log over the "
              f"last {HELDOUT_TREND_ITERATIONS:,} iterations; mean and range over runs): what more training would "
              "have bought. Converged: each checked run by the verdicts' rule (report.json's convergence: the "
              "plateau flag, or the half-budget check with the archived run at twice the cap, if any). "
              "Half-budget check "
              "(runs of pretrain.half_budget_seeds): how much lower the held-out error ended (mean of the last "
              "evaluations) than that of the same world model pretrained for half the cap: what the last doubling "
              "of the budget bought. Mean over runs.", "",
              "| task | setting | variant | runs | converged | held-out error trend per 1k iterations "
              "| half-budget check: error at half the cap -> at the cap "
              "| 1-step latent error | 1-step vs copy (copy's error) | H-step latent error "
              "| reward correlation | reward error (normalised) | latent spread: first -> kept |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, setting, variant), group in table.groupby(["task", "setting", "variant"]):
        lines.append(f"| {task} | {setting} | {variant} | {len(group)} | {_convergence(group)} "
                     f"| {_trend(group.heldout_trend_per_1k)} | {_half_budget(group)} "
                     f"| {_fmt(group.heldout_latent_nmse_1.mean(), 4)} "
                     f"| {_fmt(group.heldout_latent_vs_copy_1.mean(), 3)} ({_fmt(group.heldout_copy_nmse_1.mean(), 4)}) "
                     f"| {_fmt(group.heldout_latent_nmse_H.mean(), 4)} "
                     f"| {_fmt(group.heldout_reward_corr.mean(), 3)} | {_fmt(group.heldout_reward_nmse.mean(), 4)} "
                     f"| {_fmt(group.first_latent_spread.mean(), 4)} -> {_fmt(group.heldout_latent_spread.mean(), 4)} |")
    lines += ["", "## Imagined vs real reward per step (model exploitation)", "",
              "The reward per step the actor was trained on (the model's prediction along its imagined rollouts "
              "from dataset states, last 10% of policy iterations) beside what the policy earns per step in the "
              "real task (final evaluations). Imagination starts from the data's states and evaluation from the "
              "task's initial states, so the two can differ for a good policy too; an imagined reward several "
              "times the real one is a policy that found actions its model overrates (check with "
              "`python -m pwm.experiments.probe <run>/checkpoint.pt`). Saturated: the share of action "
              "dimensions whose policy mean sits at the tanh bound (|a| > 0.99), same iterations; near 100% the "
              "actor gets almost no gradient and its exploration noise no longer moves the action "
              "(`alg.actor_entropy_coef` counters it). Critic overvaluation: the critic's value minus the real "
              "discounted return, averaged over every state of the final evaluations' episodes "
              "(`critic_eval/value_bias`); a policy stuck where its critic promises a return it never earns "
              "shows a large positive one. Closed-loop gap: the same comparison from the same states, without "
              "the caveat above: from windows of the final evaluations' episodes, the reward per step the model "
              "predicts when the deterministic policy acts on the model's own latents, minus what the policy "
              "earned from those states (`wm_eval/imagined_policy_gap`; 0 = no exploitation). Mean over runs.", "",
              "| task | setting | variant | runs | imagined | real | imagined / real | closed-loop gap | saturated "
              "| critic overvaluation |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (task, setting, variant), group in table.groupby(["task", "setting", "variant"]):
        imagined, real = group.imagined_reward_per_step.mean(), group.real_reward_per_step.mean()
        ratio = imagined / real if real > 0 else float("nan")
        saturated = group["saturated_fraction"].mean() if "saturated_fraction" in group else float("nan")
        bias = group["value_bias_final"].mean() if "value_bias_final" in group else float("nan")
        gap = group["closed_loop_gap_final"].mean() if "closed_loop_gap_final" in group else float("nan")
        lines.append(f"| {task} | {setting} | {variant} | {len(group)} | {_fmt(imagined, 3)} | {_fmt(real, 3)} "
                     f"| {_fmt(ratio, 1)} | {_fmt(gap, 3)} | {f'{saturated:.0%}' if math.isfinite(saturated) else 'n/a'} "
                     f"| {_fmt(bias, 1)} |")
    lines += _spread_sources(table)
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in report["figures"]]
    return "\n".join(lines) + "\n"
