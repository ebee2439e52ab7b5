"""matplotlib for file output only: the Agg backend, and one way to write a finished figure."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path: Path, dpi: int = 110) -> Path:
    """Lay out, write to `path` (format from the suffix) and free the figure."""
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return Path(path)
