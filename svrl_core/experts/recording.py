"""Recording a scripted controller's episode as a demonstration."""

from __future__ import annotations

from typing import Callable

import numpy as np

from svrl_core.data import Episode
from svrl_core.envs import VLAEnv


def record_episode(env: VLAEnv, task: str, seed: int, controller: Callable[[], Callable[[], np.ndarray]],
                   execute: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[Episode, bool]:
    """Reset to (task, seed), build the controller (it may read the new scene), then act one step
    at a time, recording every camera; returns the episode and whether it succeeded.

    `execute` maps the controller's action to the one the env runs (DART: a perturbed one); the
    episode always records the controller's action as the label.
    """
    obs = env.reset(task, seed)
    act = controller()
    images, states, actions = {camera: [] for camera in obs.images}, [], []
    while True:
        action = act()  # (D,) float32
        for camera, image in obs.images.items():
            images[camera].append(image)
        states.append(obs.proprio)
        actions.append(action)
        result = env.step((action if execute is None else execute(action))[None, :])
        obs = result.obs
        if result.done:
            break
    episode = Episode(task=obs.instruction, images={c: np.stack(v) for c, v in images.items()},
                      states=np.stack(states), actions=np.stack(actions))
    return episode, result.success
