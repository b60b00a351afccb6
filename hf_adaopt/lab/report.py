"""`hf-adaopt report`: rebuild a comparison's `report.md`, `results.json` and PNG plots from `results.jsonl`.

    hf-adaopt report out/compare-digits                 # rebuild everything from the stored runs
    hf-adaopt report out/compare-digits --threshold 0.9 # absolute convergence threshold instead of 95% of best

Everything is recomputed from the JSON lines that `hf-adaopt compare` appends (one per finished run), so a
report can be rebuilt at any time, also while shards are still running. `compare_config.json`, when
present, supplies the command line and the threshold settings; the environment comes from the runs.
The numbers come from `hf_adaopt.lab.analysis`, the markdown from `hf_adaopt.lab.render`, the plots from `hf_adaopt.lab.plots`.
"""

from __future__ import annotations

import argparse
import json
import os

from hf_adaopt.lab import analysis, render, results, stats, suite_report
from hf_adaopt.lab.analysis import DEFAULT_ALPHA, DEFAULT_THRESHOLD_FRACTION
from hf_adaopt.lab.plots import make_plots


def build_report(
    output_dir: str,
    threshold: float | None = None,
    threshold_fraction: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    plots: bool = True,
) -> dict:
    """Recompute everything from `<output_dir>/results.jsonl`; write results.json, report.md and the plots.

    threshold / threshold_fraction default to what compare_config.json recorded (else 95% of the best).
    Returns the results.json content.
    """
    config = results.load_config(output_dir)
    runs = results.load_results(output_dir)
    if threshold is None and threshold_fraction is None:
        threshold = config.get("threshold")
    if threshold_fraction is None:
        threshold_fraction = config.get("threshold_fraction") or DEFAULT_THRESHOLD_FRACTION
    result = analysis.analyze(runs, config, threshold, threshold_fraction, alpha, n_resamples=n_resamples, seed=seed)
    made = make_plots(result, runs, output_dir, seed) if plots else []
    result["plots"] = made
    text = json.dumps(results.json_safe(result), indent=1) + "\n"
    results.write_atomic(os.path.join(output_dir, results.RESULTS_JSON), text)
    results.write_atomic(os.path.join(output_dir, results.REPORT_FILE), render.render_markdown(result, made))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-adaopt report",
        description="Rebuild report.md, results.json and the plots of a comparison from its results.jsonl.",
    )
    parser.add_argument("output_dir", help="a directory written by `hf-adaopt compare` or `hf-adaopt suite`")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="absolute eval accuracy for steps-to-threshold (default: the compare run's setting)",
    )
    parser.add_argument(
        "--threshold_fraction",
        type=float,
        default=None,
        help="threshold = this fraction of the best final mean accuracy (default 0.95)",
    )
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="significance level (Holm-adjusted)"
    )
    parser.add_argument(
        "--n_resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="bootstrap resamples"
    )
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    if os.path.isfile(os.path.join(args.output_dir, results.SUITE_CONFIG_FILE)):  # a `hf-adaopt suite` directory
        return suite_report.main([args.output_dir])
    try:
        result = build_report(
            args.output_dir,
            args.threshold,
            args.threshold_fraction,
            args.alpha,
            args.n_resamples,
            plots=not args.no_plots,
        )
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"hf-adaopt report: error: {e}\n")
    print(
        f"wrote {os.path.join(args.output_dir, 'report.md')}, results.json and {len(result['plots'])} plots"
    )
    print()
    print(render.summary_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
