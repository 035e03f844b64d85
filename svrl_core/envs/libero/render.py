"""Cheap CPU rendering of a compiled MuJoCo model, with the physics left untouched.

On a CPU (llvmpipe) the cost of a frame follows the number of triangles drawn, and a
LIBERO scene draws ~380k of them, mostly scanned-object and robot meshes that are only
ever seen at 128 px. `simplify_render_meshes` rewrites, in place, the face list of every
mesh that only visual geoms use (contype = conaffinity = 0) with a vertex-clustered subset
of its own vertices. Vertices, collision meshes, convex hulls and inertias (computed at
compile time) are not touched, so stepping the model gives bit-identical trajectories.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mujoco
import numpy as np

DEFAULT_CACHE = Path(os.environ.get("SVRL_CACHE", Path.home() / ".cache" / "svrl")) / "render_meshes"


def visual_only_meshes(model: mujoco.MjModel) -> list[int]:
    """Mesh ids drawn by visual geoms only: collision never reads them."""
    is_mesh = model.geom_type == mujoco.mjtGeom.mjGEOM_MESH
    collides = (model.geom_contype | model.geom_conaffinity) > 0
    visual = set(model.geom_dataid[is_mesh & ~collides].tolist())
    colliding = set(model.geom_dataid[is_mesh & collides].tolist())
    return sorted(visual - colliding)


def cluster_faces(verts: np.ndarray, faces: np.ndarray, max_faces: int) -> np.ndarray:
    """Vertex clustering: snap vertices to a grid, keep one existing vertex per cell.

    verts (V, 3), faces (F, 3) local indices -> faces (F', 3) over the same vertices,
    F' <= max_faces, with degenerate and repeated triangles removed. The grid is refined
    by halving steps until the face budget would be exceeded.
    """
    extent = np.ptp(verts, axis=0).max() or 1.0
    best = faces[: max(max_faces, 1)]  # fallback for degenerate meshes: a prefix of the faces
    for cells in (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128):
        cell = np.floor((verts - verts.min(axis=0)) / (extent / cells)).astype(np.int64)  # (V, 3)
        _, first, cluster = np.unique(cell, axis=0, return_index=True, return_inverse=True)
        snapped = first[cluster.ravel()][faces]  # (F, 3): representative vertex per corner
        keep = (snapped[:, 0] != snapped[:, 1]) & (snapped[:, 1] != snapped[:, 2]) & (snapped[:, 0] != snapped[:, 2])
        candidate = np.unique(snapped[keep], axis=0)
        if len(candidate) > max_faces:
            break
        best = candidate
    return best.astype(np.int32)


def _cached_faces(verts: np.ndarray, faces: np.ndarray, max_faces: int, cache_dir: Path) -> np.ndarray:
    key = hashlib.sha256(verts.tobytes() + faces.tobytes() + str(max_faces).encode()).hexdigest()[:32]
    path = cache_dir / f"{key}.npy"
    if path.exists():
        return np.load(path)
    simplified = cluster_faces(verts, faces, max_faces)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, simplified)
    os.replace(tmp, path)  # concurrent workers may race: each writes whole files
    return simplified


def simplify_render_meshes(model: mujoco.MjModel, max_faces: int, cache_dir: Path = DEFAULT_CACHE) -> int:
    """Cut every visual-only mesh to at most `max_faces` triangles, in place; return faces drawn after.

    Each new corner reuses a normal and texture coordinate that an original corner at the
    same vertex had, so shading and textures stay roughly right.
    """
    for mesh in visual_only_meshes(model):
        n_faces = int(model.mesh_facenum[mesh])
        if n_faces <= max_faces:
            continue
        v0, nv = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        f0 = int(model.mesh_faceadr[mesh])
        rows = slice(f0, f0 + n_faces)
        faces = model.mesh_face[rows].copy()  # (F, 3), indices local to the mesh
        new_faces = _cached_faces(model.mesh_vert[v0:v0 + nv], faces, max_faces, cache_dir)
        model.mesh_facenormal[f0:f0 + len(new_faces)] = _corner_attribute(faces, model.mesh_facenormal[rows], new_faces, nv)
        if model.mesh_texcoordnum[mesh]:
            model.mesh_facetexcoord[f0:f0 + len(new_faces)] = _corner_attribute(
                faces, model.mesh_facetexcoord[rows], new_faces, nv)
        model.mesh_face[f0:f0 + len(new_faces)] = new_faces
        model.mesh_facenum[mesh] = len(new_faces)
    return int(model.mesh_facenum.sum())


def _corner_attribute(faces: np.ndarray, attribute: np.ndarray, new_faces: np.ndarray, n_verts: int) -> np.ndarray:
    """Per-corner attribute index (normal or texcoord) for new faces, taken from the old corners."""
    per_vertex = np.zeros(n_verts, dtype=attribute.dtype)
    per_vertex[faces.ravel()] = attribute.ravel()  # (V,): some corner's attribute at each vertex
    return per_vertex[new_faces]  # (F', 3)


class CameraRenderer:
    """Renders named cameras of a live model/data pair, upright, uint8 (H, W, 3).

    MSAA is switched off (it must be before the GL context exists) and collision geoms
    (group 0) are hidden, as robosuite's offscreen renderer does.
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int, msaa: bool = False):
        if not msaa:
            model.vis.quality.offsamples = 0
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        try:
            self._renderer = mujoco.Renderer(model, height, width)
        except Exception as err:
            raise RuntimeError(
                f"LIBERO cameras: no OpenGL context ({err}). Set MUJOCO_GL=egl (or osmesa) before mujoco is "
                "first imported, and install the EGL packages that `make setup` installs") from err
        self._options = mujoco.MjvOption()
        self._options.geomgroup[0] = 0
        self._options.geomgroup[1] = 1

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        self._renderer.update_scene(data, camera=camera, scene_option=self._options)
        return self._renderer.render().copy()  # (H, W, 3) uint8, row 0 at the top

    def close(self) -> None:
        self._renderer.close()
