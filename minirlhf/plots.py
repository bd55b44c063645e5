"""Plots saved as PNG files (matplotlib's Agg backend: no screen needed)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minirlhf.metrics import read_metrics, series  # noqa: E402


def plot_metrics(metrics_path, out_path, panels, title=None):
    """One panel per entry of `panels`: {"panel title": ["key", ...]} drawn against step."""
    records = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel, keys) in zip(axes[0], panels.items()):
        for key in keys:
            steps, values = series(records, key)
            if steps:
                ax.plot(steps, values, label=key, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
