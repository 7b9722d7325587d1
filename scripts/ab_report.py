"""Rebuild the A/B report from finished runs:  python scripts/ab_report.py runs/ab [out_dir]"""

import argparse

from pwm.experiments.report import build_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", help="general.root of the A/B runs (holds runs/)")
    parser.add_argument("out_dir", nargs="?", default=None, help="default: <root>/report")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--bootstrap-reps", type=int, default=2000)
    parser.add_argument("--learned-std-margin", type=float, default=2.0)
    parser.add_argument("--learned-min-gain", type=float, default=0.1)
    args = parser.parse_args()
    report = build_report(args.root, args.out_dir, tuple(args.thresholds), args.bootstrap_reps,
                          args.learned_std_margin, args.learned_min_gain)
    for c in report["comparisons"]:
        print(f"{c['flow_variant']} vs baseline [{c['setting']}]: {c['verdict'].upper()}")


if __name__ == "__main__":
    main()
