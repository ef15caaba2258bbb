"""What a search leaves for a person: a markdown report and plots (Pareto front, best-so-far)."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_plot(history, front, winner, budget_ms, path, title: str = "") -> Path:
    """Accuracy vs predicted latency of every evaluation, the Pareto front, the budget and the winner."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([e.latency * 1e3 for e in history], [100 * e.accuracy for e in history], s=12, alpha=0.5, label="evaluated")
    ax.plot([e.latency * 1e3 for e in front], [100 * e.accuracy for e in front], "-o", color="C1", ms=4, label="Pareto front")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="grey", ls="--", label=f"budget {budget_ms:g} ms")
    ax.plot([winner.latency * 1e3], [100 * winner.accuracy], "*", color="C3", ms=14, label="winner")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("accuracy, inherited weights (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def best_so_far_plot(curves: dict[str, list[float]], path, title: str = "") -> Path:
    """Best accuracy vs number of evaluations, one line per strategy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), [100 * y for y in ys], label=name)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best accuracy so far (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_report(s: dict, path) -> Path:
    w, lat = s["winner"], s["latency"]
    budget = f"{s['budget_ms']:g} ms" if s["budget_ms"] is not None else "none (Pareto front)"
    lines = [
        "# tuili nas report", "",
        f"- CPU: {s['cpu']}",
        f"- engine: {s['engine']}, batch {s['batch']}, threads {s['threads']}; budget {budget}",
        f"- search: {s['strategy']}{' (Pareto mode)' if s['pareto'] else ''}, {s['evaluations']} evaluations",
        "", "## Winner", "",
        f"`{w['key']}` ({w['params'] / 1e3:.1f} K params)", "",
        "| accuracy (inherited, val) | test accuracy (fine-tuned) | predicted | measured |",
        "|---|---|---|---|",
        f"| {100 * w['accuracy']:.2f}% | **{100 * w['test_accuracy']:.2f}%** | {w['predicted_ms']:.3f} ms | "
        f"{w['measured_ms']:.3f} ms |",
        "", "## Latency model", "",
        f"Table: {lat['blocks']} blocks ({'cached' if lat['table_cached'] else 'measured now'}), {lat['table']}.",
        f"Predictor: {lat['per_lut']:.3f} x LUT sum {lat['per_block'] * 1e6:+.2f} us/block {lat['intercept'] * 1e6:+.2f} us; "
        f"fitted on {lat['fit_archs']} networks (MAPE {100 * lat['fit_mape']:.1f}%)"
        + (f", **MAPE {100 * lat['mape']:.1f}%** on {lat['check_archs']} others (the plain LUT sum: "
           f"{100 * lat['lut_sum_mape']:.1f}%)." if "mape" in lat else "."),
        "", "## Pareto front (accuracy with inherited weights)", "",
        "| architecture | latency (predicted) | accuracy |", "|---|---|---|",
        *(f"| `{e['key']}` | {e['latency'] * 1e3:.3f} ms | {100 * e['accuracy']:.2f}% |" for e in s["front"]),
        "", "## Time", "",
        *(f"- {k}: {v:.0f} s" for k, v in s["seconds"].items()),
        f"- total: {sum(s['seconds'].values()):.0f} s", "",
    ]
    Path(path).write_text("\n".join(lines))
    return Path(path)
