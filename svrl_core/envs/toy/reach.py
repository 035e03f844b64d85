"""A fast 2-D reach task that still needs vision and language.

Coloured discs lie at random places in a unit arena; the instruction names one colour; the
agent (a white square) must move onto that disc within the step limit. Object positions
appear only in the image and the target only in the instruction, so neither proprio
(the agent's own position) nor the image alone is enough to succeed.
"""

from __future__ import annotations

import numpy as np

from svrl_core.config import EnvConfig
from svrl_core.envs.base import Obs, StepResult

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
}
CAMERA = "main"
MAX_STEP = 0.1  # arena units moved per step at |action| = 1
OBJECT_RADIUS = 0.08
AGENT_HALF_SIZE = 0.04
SUCCESS_RADIUS = 0.08
MIN_SEPARATION = 0.25
BACKGROUND = 60


def instruction_for(task: str) -> str:
    return f"move to the {task} disc"


class ToyReachEnv:
    """VLAEnv over tasks named by target colour ("red", "green", ...)."""

    action_dim = 2
    action_names = ("dx", "dy")

    def __init__(self, cfg: EnvConfig):
        unknown = [t for t in cfg.tasks if t not in COLOURS]
        if unknown:
            raise ValueError(f"toy env: unknown task(s) {unknown}; valid: {sorted(COLOURS)}")
        if cfg.n_objects > len(COLOURS):
            raise ValueError(f"toy env: n_objects={cfg.n_objects} exceeds {len(COLOURS)} colours")
        self.tasks = tuple(cfg.tasks)
        self.max_steps = cfg.max_steps
        self.n_objects = cfg.n_objects
        self.image_size = cfg.image_size
        centres = (np.arange(cfg.image_size) + 0.5) / cfg.image_size
        self._grid_x, self._grid_y = np.meshgrid(centres, centres)  # (H, W) each
        self._task: str | None = None

    # --- episode state -------------------------------------------------------------
    def reset(self, task: str, seed: int) -> Obs:
        if task not in COLOURS:
            raise ValueError(f"toy env: unknown task {task!r}; valid: {sorted(COLOURS)}")
        rng = np.random.default_rng([seed, list(COLOURS).index(task)])
        others = [c for c in COLOURS if c != task]
        colours = [task] + list(rng.choice(others, size=self.n_objects - 1, replace=False))
        self._object_colours = colours
        self._object_xy = self._place(rng, self.n_objects, MIN_SEPARATION)
        self._agent_xy = self._place_agent(rng, self._object_xy[0])
        self._task, self._steps, self._success = task, 0, False
        return self._observe()

    def step(self, action_chunk: np.ndarray) -> StepResult:
        if self._task is None:
            raise RuntimeError("toy env: call reset() before step()")
        chunk = np.asarray(action_chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"toy env: action chunk must be (K, {self.action_dim}), got {chunk.shape}")
        executed = 0
        for action in chunk:
            if self._success or self._steps >= self.max_steps:
                break
            self._agent_xy = np.clip(self._agent_xy + np.clip(action, -1, 1) * MAX_STEP, 0.0, 1.0)
            self._steps += 1
            executed += 1
            self._success = self.distance_to_target() < SUCCESS_RADIUS
        done = self._success or self._steps >= self.max_steps
        return StepResult(self._observe(), done, self._success, executed, {"steps": self._steps})

    def close(self) -> None:
        self._task = None

    # --- privileged state (for the scripted expert and tests) ----------------------
    @property
    def agent_xy(self) -> np.ndarray:
        return self._agent_xy.copy()

    @property
    def target_xy(self) -> np.ndarray:
        return self._object_xy[0].copy()

    def distance_to_target(self) -> float:
        return float(np.linalg.norm(self._agent_xy - self._object_xy[0]))

    # --- internals -----------------------------------------------------------------
    @staticmethod
    def _place(rng: np.random.Generator, n: int, separation: float) -> np.ndarray:
        points: list[np.ndarray] = []
        while len(points) < n:
            p = rng.uniform(0.12, 0.88, size=2)
            if all(np.linalg.norm(p - q) >= separation for q in points):
                points.append(p)
        return np.stack(points)  # (n, 2)

    @staticmethod
    def _place_agent(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
        while True:
            p = rng.uniform(0.05, 0.95, size=2)
            if np.linalg.norm(p - target) >= 0.3:
                return p

    def _observe(self) -> Obs:
        return Obs({CAMERA: self._render()}, self._agent_xy.astype(np.float32), instruction_for(self._task))

    def _render(self) -> np.ndarray:
        image = np.full((self.image_size, self.image_size, 3), BACKGROUND, dtype=np.uint8)  # (H, W, 3)
        for colour, (x, y) in zip(self._object_colours, self._object_xy):
            disc = (self._grid_x - x) ** 2 + (self._grid_y - y) ** 2 <= OBJECT_RADIUS**2
            image[disc] = COLOURS[colour]
        ax, ay = self._agent_xy
        agent = (np.abs(self._grid_x - ax) <= AGENT_HALF_SIZE) & (np.abs(self._grid_y - ay) <= AGENT_HALF_SIZE)
        image[agent] = 255
        return image
