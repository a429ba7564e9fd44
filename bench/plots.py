"""One PNG per figure: each supervisor's value against N, to see how each cost grows.

matplotlib is imported here only (the `bench` extra); without it the bench says so and writes
the JSON and the tables all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from measure import Result
from report import METRICS, SUITE

STYLE = {SUITE: ("tab:blue", "o"), "floor": ("black", "s"), "supervisord": ("tab:orange", "^"),
         "circus": ("tab:green", "v"), "pm2": ("tab:red", "D")}
LOG_SCALE = {"respawn_median_ms", "respawn_p90_ms", "new_service_ms", "stop_all_s", "startup_s"}


def draw(results: Sequence[Result], order: Sequence[str], out_dir: Path, title_note: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: matplotlib is not installed (pip install '.[bench]')")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for metric in METRICS:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        drawn = False
        for name in order:
            points = sorted((r.n, getattr(r, metric.key)) for r in results
                            if r.supervisor == name and getattr(r, metric.key) is not None)
            if not points:
                continue
            color, marker = STYLE.get(name, ("gray", "x"))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color, label=name)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        if metric.key in LOG_SCALE:
            ax.set_yscale("log")
        ax.set_xlabel("N services")
        ax.set_ylabel(metric.label.split(" [")[0])
        ax.set_title(f"{metric.label.split(' [')[0]}\n{title_note}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric.key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
