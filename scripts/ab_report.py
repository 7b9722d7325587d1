"""Rebuild the A/B report from finished runs:  python scripts/ab_report.py runs/ab [out_dir]"""

import argparse

from pwm.experiments.report import BOOTSTRAP_REPS, THRESHOLDS, LearnedBar, build_report
from pwm.experiments.statistics import Criteria
from pwm.experiments.verdict import CONVERGENCE_RULES, ConvergenceRule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", help="general.root of the A/B runs (holds runs/)")
    parser.add_argument("out_dir", nargs="?", default=None, help="default: <root>/report")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--bootstrap-reps", type=int, default=BOOTSTRAP_REPS)
    bar = LearnedBar()
    parser.add_argument("--learned-std-margin", type=float, default=bar.std_margin)
    parser.add_argument("--learned-min-gain", type=float, default=bar.min_gain)
    parser.add_argument("--learned-min-scale", type=float, default=bar.min_scale)
    defaults = Criteria()
    parser.add_argument("--final-evals", type=int, default=defaults.final_evals)
    parser.add_argument("--hold-evals", type=int, default=defaults.hold_evals)
    parser.add_argument("--tie-tolerance", type=float, default=defaults.tie_tolerance)
    parser.add_argument("--confidence", type=float, default=defaults.confidence)
    convergence = ConvergenceRule()
    parser.add_argument("--convergence", choices=CONVERGENCE_RULES, default=convergence.rule,
                        help="when world models count as converged (report.convergence of ab.yaml)")
    parser.add_argument("--half-budget-tolerance", type=float, default=convergence.tolerance)
    parser.add_argument("--budget-dir", action="append", default=[],
                        help="a folder of runs at other caps (report.budget_dirs; repeatable): a run short of "
                        "converged whose double was tried is judged by it")
    args = parser.parse_args()
    criteria = Criteria(args.final_evals, args.hold_evals, args.tie_tolerance, args.confidence)
    bar = LearnedBar(args.learned_std_margin, args.learned_min_gain, args.learned_min_scale)
    report = build_report(args.root, args.out_dir, tuple(args.thresholds), args.bootstrap_reps, bar, criteria,
                          convergence=ConvergenceRule(args.convergence, args.half_budget_tolerance,
                                                      tuple(args.budget_dir)))
    for c in report["comparisons"]:
        print(f"{c['flow_variant']} vs baseline [{c['setting']}, {c['model']}]: {c['verdict'].upper()}")


if __name__ == "__main__":
    main()
