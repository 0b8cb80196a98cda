"""
Training curves from tgrpo.py's metrics.jsonl files, several runs on the same axes (GRPO vs T-GRPO).

    python plot.py                                            # the experiment's last seed, every RL arm -> experiment/curves.png
    python plot.py out/grpo_demo out/tgrpo_demo --out=curves.png --smooth=20

Arguments: run folders (or metrics.jsonl paths); the legend names a run by its folder. Curves are
moving averages over `smooth` steps (a step is only a few prompt groups, so raw values are noisy).
Needs matplotlib (pip install matplotlib), which nothing else in the project does.
"""
import json
import os
import sys

PANELS = [  # (title, [(metric, line style)])
    ("mean reward", [("reward", "-")]),
    ("accuracy reward", [("reward_accuracy", "-")]),
    ("p (ordered, solid) vs p~ (shuffled, dashed)", [("p_ordered", "-"), ("p_shuffled", "--")]),
    ("video groups: bonus paid (solid), advantages moved (dashed)",
     [("temporal_bonus_rate", "-"), ("temporal_bonus_moved", "--")]),
    ("KL to the reference", [("kl", "-")]),
    ("completion length (tokens)", [("completion_len", "-")]),
]


def load(path):
    path = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    with open(path) as f:
        return [m for m in map(json.loads, f) if "reward" in m]  # training steps only


def smoothed(xs, n):
    """Trailing moving average that skips NaN (steps without a video group have no p).
    >>> smoothed([1.0, float("nan"), 3.0], 2)
    [1.0, 1.0, 3.0]
    """
    out = []
    for i in range(len(xs)):
        window = [x for x in xs[max(0, i - n + 1):i + 1] if x == x]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def main(runs, out, smooth):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py needs matplotlib: pip install matplotlib")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    for run, colour in zip(runs, ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"]):
        metrics = load(run)
        steps = [m["step"] for m in metrics]
        name = os.path.basename(os.path.normpath(run if os.path.isdir(run) else os.path.dirname(run)))
        for ax, (title, lines) in zip(axes.flat, PANELS):
            for key, style in lines:
                if any(key in m for m in metrics):
                    ax.plot(steps, smoothed([m.get(key, float("nan")) for m in metrics], smooth),
                            style, color=colour, label=name if style == "-" else None)
            ax.set_title(title)
    for ax in axes[1]:
        ax.set_xlabel("step")
    axes[0, 0].legend()
    fig.suptitle(f"T-GRPO vs GRPO on the demo world (moving average over {smooth} steps)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    if not args:
        seed = max(int(d[4:]) for d in os.listdir("out/experiment") if d.startswith("seed"))
        arms = ("grpo", "tgrpo", "grpo_batch", "tgrpo_batch", "tgrpo_all")
        args = [f"out/experiment/seed{seed}/{a}" for a in arms if os.path.isdir(f"out/experiment/seed{seed}/{a}")]
    main(args, opts.get("out", "experiment/curves.png"), int(opts.get("smooth", 20)))
