"""Does the search pay? The same space searched by TPE + ASHA, TPE alone, random + ASHA and random
alone, over several study seeds, through the real CLI (issue 17). Compute is counted in training
epochs (and wall time): a strategy with ASHA gets ``--asha-factor`` times the trials, so that all
strategies spend about the same epochs, and every curve is read at the same epoch budget. Pass
``--set tpe_startup=N`` below the trial count: TPE's first trials are random search's (the same
ones, for the same seed).

    python benchmarks/search_efficiency.py --space search_spaces/aal.yaml --seeds 0 1 2 \\
        --samples 8 --asha-factor 2 --set data.num_train=300 --set fixed.train.epochs=4 --out studies/search_eff

Best-so-far counts trials that ran their full epochs (a trial ASHA stopped has no final score,
only its cost), in the order the trials ended. Output: ``curves.png`` (best-so-far val mIoU
against cumulative epochs per strategy, mean over study seeds with the min-max band),
``search_efficiency.md`` and ``.parquet`` (per strategy: the best at the common budget, and the
epochs each needs to reach random search's final best, mean over seeds). Studies already in
``--out`` are reused (delete a folder to rerun it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {  # name: (sampler, scheduler.type)
    "TPE + ASHA": ("tpe", "asha"),
    "TPE": ("tpe", "none"),
    "random + ASHA": ("random", "asha"),
    "random": ("random", "none"),
}


def run_study(space: str, out: Path, sampler: str, scheduler: str, seed: int, samples: int, sets: list[str]) -> float:
    """One study through the CLI (skipped when ``out`` already holds a finished one); its wall seconds."""
    if (out / "trials.parquet").is_file():
        return float("nan")
    cmd = [sys.executable, "-m", "study.run", "--space", space, "--output", str(out), "--address", "local",
           "--num-samples", str(samples), "--set", f"sampler={sampler}", "--set", f"scheduler.type={scheduler}",
           "--set", f"seed={seed}", "--set", "budget.include_defaults=false", *sum((["--set", s] for s in sets), [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"study {out} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def curve(trials: pd.DataFrame, mode: str = "max") -> pd.DataFrame:
    """Best-so-far of the full-length trials against cumulative epochs and seconds, in end order.

    Example:
        >>> t = pd.DataFrame({"status": ["COMPLETE", "PRUNED", "COMPLETE"], "epochs": [4, 2, 4],
        ...                   "score": [0.3, 0.5, 0.4], "start_time": pd.to_datetime([0, 1, 2], unit="s"),
        ...                   "duration_s": [10.0, 3.0, 10.0]})
        >>> curve(t)[["epochs", "best"]].values.tolist()
        [[2.0, nan], [6.0, 0.3], [10.0, 0.4]]
    """
    t = trials.assign(end=trials["start_time"] + pd.to_timedelta(trials["duration_s"], unit="s")).sort_values("end")
    full = t["score"].where(t["status"] == "COMPLETE")
    best = (full.cummax() if mode == "max" else full.cummin()).ffill()
    return pd.DataFrame({"epochs": t["epochs"].cumsum().astype(float).values, "seconds": t["duration_s"].cumsum().values,
                         "best": best.values})


def best_at(c: pd.DataFrame, epochs: float) -> float:
    """The best-so-far once ``epochs`` were spent (NaN before the first full trial)."""
    seen = c[c["epochs"] <= epochs]["best"]
    return float(seen.iloc[-1]) if len(seen) else float("nan")


def epochs_to_reach(c: pd.DataFrame, target: float) -> float:
    """Cumulative epochs when the best-so-far first reached ``target`` (inf if never)."""
    hit = c[c["best"] >= target - 1e-12]
    return float(hit["epochs"].iloc[0]) if len(hit) else float("inf")


def summarise(curves: dict[str, list[pd.DataFrame]]) -> pd.DataFrame:
    """Per strategy: the best at the common budget (the smallest total any study spent), and the
    epochs it needs to reach random search's final best of the same study seed (random's own: the
    epochs at which it first reached that best), with the ratio to random's, median over seeds."""
    budget = min(c["epochs"].iloc[-1] for cs in curves.values() for c in cs)
    targets = [best_at(c, budget) for c in curves["random"]]
    own = np.array([epochs_to_reach(c, t) for c, t in zip(curves["random"], targets)])
    rows = []
    for name, cs in curves.items():
        at = [best_at(c, budget) for c in cs]
        reach = np.array([epochs_to_reach(c, t) for c, t in zip(cs, targets)])
        rows.append({"strategy": name, "studies": len(cs), "budget_epochs": budget,
                     "best_at_budget": np.nanmean(at), "best_at_budget_std": np.nanstd(at),
                     "epochs_to_random_best": float(np.median(reach)), "reached_in": f"{np.isfinite(reach).sum()}/{len(cs)}",
                     "compute_vs_random": float(np.median(reach / own)),
                     "wall_s_per_epoch": np.mean([c["seconds"].iloc[-1] / c["epochs"].iloc[-1] for c in cs])})
    return pd.DataFrame(rows)


def figure(curves: dict[str, list[pd.DataFrame]], budget: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    grid = np.linspace(0, budget, 200)
    for (name, cs), colour in zip(curves.items(), ["#C44E52", "#DD8452", "#4C72B0", "#8C8C8C"]):
        ys = np.array([[best_at(c, x) for x in grid] for c in cs])
        with warnings.catch_warnings():  # before a strategy's first full trial there is no best yet
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(grid, 100 * np.nanmean(ys, 0), color=colour, lw=2, label=f"{name} ({len(cs)} seeds)")
            ax.fill_between(grid, 100 * np.nanmin(ys, 0), 100 * np.nanmax(ys, 0), color=colour, alpha=0.15)
    ax.set_xlabel("training epochs spent (all trials)")
    ax.set_ylabel("best val mIoU so far (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="search_spaces/aal.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=8, help="trials of a strategy without ASHA")
    p.add_argument("--asha-factor", type=float, default=2.0, help="trials with ASHA = samples x this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every study")
    p.add_argument("--out", default="studies/search_efficiency")
    args = p.parse_args(argv)
    out = Path(args.out)
    curves: dict[str, list[pd.DataFrame]] = {name: [] for name in STRATEGIES}
    for seed in args.seeds:
        for name, (sampler, scheduler) in STRATEGIES.items():
            n = round(args.samples * (args.asha_factor if scheduler == "asha" else 1))
            folder = out / f"{sampler}-{scheduler}-seed{seed}"
            wall = run_study(args.space, folder, sampler, scheduler, seed, n, args.set)
            curves[name].append(curve(pd.read_parquet(folder / "trials.parquet")))
            print(f"{name:<14} seed {seed}: {n} trials, {curves[name][-1]['epochs'].iloc[-1]:.0f} epochs, "
                  f"best {100 * curves[name][-1]['best'].iloc[-1]:.1f}" + (f" ({wall:.0f} s)" if wall == wall else ""),
                  flush=True)
    table = summarise(curves)
    table.to_parquet(out / "search_efficiency.parquet", index=False)
    budget = float(table["budget_epochs"].iloc[0])
    png = figure(curves, budget, out / "curves.png", f"{Path(args.space).stem}: best-so-far at equal epochs")
    shown = table.assign(**{"best at budget (%)": [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in
                                                  zip(table["best_at_budget"], table["best_at_budget_std"])]})
    md = shown[["strategy", "studies", "budget_epochs", "best at budget (%)", "epochs_to_random_best", "reached_in",
                "compute_vs_random", "wall_s_per_epoch"]].to_markdown(index=False, floatfmt=".2f")
    (out / "search_efficiency.md").write_text(md + f"\n\n![curves]({png.name})\n")
    print(md)
    print(f"wrote {out / 'search_efficiency.md'}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
