"""svrl core library: envs, data, policies, GRPO, evaluation, export. No Prefect, no DVC."""

import os as _os

# Headless software OpenGL for MuJoCo cameras (LIBERO). MuJoCo picks its GL backend when it is
# first imported, and every svrl_core import runs this first.
_os.environ.setdefault("MUJOCO_GL", "egl")
