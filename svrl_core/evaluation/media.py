"""Rollout GIFs and success-rate plots."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from svrl_core.io import atomic_directory, join  # noqa: E402
from svrl_core.rollout import Trajectory  # noqa: E402

GIF_SCALE = 4
GIF_FRAME_MS = 250


def across_tasks(trajectories: list[Trajectory]) -> list[Trajectory]:
    """Reorder so that the first episode of every task comes before the second of any."""
    rank: dict[str, int] = {}
    keyed = []
    for traj in trajectories:
        keyed.append((rank.get(traj.request.task, 0), traj))
        rank[traj.request.task] = rank.get(traj.request.task, 0) + 1
    return [traj for _, traj in sorted(keyed, key=lambda pair: pair[0])]


def save_episode_gifs(trajectories: list[Trajectory], directory: str | Path, n_videos: int, camera: str) -> list[Path]:
    """Write up to n_videos GIFs, half successes and half failures where both exist, spread over tasks.

    The directory is replaced as a whole (also at an fsspec URL); returns the GIFs' paths in it."""
    successes = across_tasks([t for t in trajectories if t.success])
    failures = across_tasks([t for t in trajectories if not t.success])
    n_success = min(len(successes), max(n_videos - len(failures), (n_videos + 1) // 2))
    chosen = successes[:n_success] + failures[: n_videos - n_success]
    names = []
    with atomic_directory(directory) as staging:
        for traj in chosen:
            frames = [o.images[camera] for o in traj.observations] + [traj.final_obs.images[camera]]
            big = [Image.fromarray(np.kron(f, np.ones((GIF_SCALE, GIF_SCALE, 1), dtype=np.uint8))) for f in frames]
            outcome = "success" if traj.success else "failure"
            names.append(f"{traj.request.task}_seed{traj.request.seed}_{outcome}.gif")
            big[0].save(staging / names[-1], save_all=True, append_images=big[1:], duration=GIF_FRAME_MS, loop=0)
    return [join(directory, name) for name in names]


def plot_success_rates(tables: dict[str, dict], path: str | Path) -> None:
    """Grouped horizontal bars: one group per task, one bar per policy (e.g. {'sft': table, 'rl': table}).

    Horizontal, so LIBERO's long task names fit as wrapped labels however many tasks there are."""
    tasks = sorted({task for table in tables.values() for task in table["per_task"]})
    height = 0.8 / max(len(tables), 1)
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.25 * len(tasks) * max(len(tables), 1)))
    for i, (name, table) in enumerate(tables.items()):
        rates = [table["per_task"].get(task, {}).get("success_rate", 0.0) for task in tasks]
        ax.barh(np.arange(len(tasks)) + i * height, rates, height, label=f"{name} ({table['success_rate']:.2f})")
    labels = [textwrap.fill(task.replace("_", " "), 32) for task in tasks]
    ax.set_yticks(np.arange(len(tasks)) + height * (len(tables) - 1) / 2, labels, fontsize=7)
    ax.invert_yaxis()  # first task on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("success rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
