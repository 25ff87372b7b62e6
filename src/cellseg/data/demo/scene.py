"""The demo's scene geometry: phantom tissue described analytically in nanometres.

A scene is phantom cells (a Voronoi tessellation of cell seeds capped by spheres, thin
extracellular gaps, plasma membrane) holding a nucleus and organelles (mitochondria with
ribosome-like specks, curved Golgi stacks, vesicles, endosomes, ER tubes and sheets), each a
signed-distance shape split into a membrane shell and a lumen. :meth:`Scene.render` evaluates
the scene on any voxel grid (origin, voxel size, shape) as label codes (:mod:`.labels`), so the
EM and every label crop are sampled from the same geometry and agree to the nanometre, and
anything large can be produced slab by slab in z. :func:`build_scene` draws a scene from a
random generator; it is deterministic for the generator's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellseg.data.demo_layout import EM_VOXEL_NM
from cellseg.data.label_codes import CODE, CYTO, NUC_BASE

# Geometry (nm). Membranes at least one EM voxel thick along any axis so that 8 nm point
# sampling never leaves holes in them.
# Stained membranes image about two 8 nm voxels thick in FIB-SEM; so are the demo's.
_ECS_GAP = 24.0  # half-width of the extracellular gap between touching cells
_PM_NM = 16.0
_MITO_MEM_NM = 16.0
_ORGANELLE_MEM_NM = 13.0
_ENDO_MEM_NM = 14.0

_NUCLEUS_CLEARANCE_NM = 40.0  # nuclei keep this far inside the plasma membrane
_ORGANELLE_CLEARANCE_NM = 4.0  # organelles likewise


@dataclass(frozen=True)
class _Shape:
    """An organelle part: signed distance < 0 inside; a membrane shell ``mem_nm`` thick.

    kind: "sphere" (centre, radius), "capsule" (centre, a, b offsets, radius),
    "ellipsoid" (centre, axes 3x3 rows = local unit axes, semi-axes, bend curvature 1/nm).
    """

    kind: str
    cell: int
    centre: np.ndarray
    params: tuple[Any, ...]
    mem_code: int
    lum_code: int
    mem_nm: float
    allowed: tuple[int, ...]
    reach: float | np.ndarray  # bounding half-extent (nm) around centre, scalar or per axis

    def __post_init__(self) -> None:
        # Tight per-axis box: a thin tilted cisterna in a cubic box would cost 10x the voxels.
        if self.kind == "ellipsoid":
            axes, semi, bend = self.params
            extent = np.sqrt(((axes * np.asarray(semi)[:, None]) ** 2).sum(axis=0))
            extent += abs(bend) * float(np.max(semi)) ** 2 * np.abs(axes[0]) + 1.0
            object.__setattr__(self, "reach", extent)

    def sdf(self, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Signed distance (nm, approximately for ellipsoids) on centre-relative coordinates."""
        if self.kind == "sphere":
            (radius,) = self.params
            return np.sqrt(dz * dz + dy * dy + dx * dx) - radius
        if self.kind == "capsule":
            a, b, radius = self.params
            ba = b - a
            pz, py, px = dz - a[0], dy - a[1], dx - a[2]
            h = np.clip((pz * ba[0] + py * ba[1] + px * ba[2]) / float(ba @ ba), 0.0, 1.0)
            qz, qy, qx = pz - h * ba[0], py - h * ba[1], px - h * ba[2]
            return np.sqrt(qz * qz + qy * qy + qx * qx) - radius
        axes, semi, bend = self.params
        u = [axes[i, 0] * dz + axes[i, 1] * dy + axes[i, 2] * dx for i in range(3)]
        # bending the thin axis by a paraboloid curves sheets / cisternae like the real ones
        u[0] = u[0] - bend * (u[1] * u[1] + u[2] * u[2])
        k0 = np.sqrt(sum((u[i] / semi[i]) ** 2 for i in range(3)))
        k1 = np.sqrt(sum((u[i] / semi[i] ** 2) ** 2 for i in range(3)))
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


@dataclass
class _Cell:
    seed: np.ndarray  # nm (z, y, x)
    radius: float  # cap of the Voronoi cell (nm)
    nucleus_centre: np.ndarray
    nucleus_semi: np.ndarray  # semi-axes (nm, z y x)
    nucleus_id: int


@dataclass(frozen=True)
class _Grid:
    """A voxel grid in nm: first-voxel centre, voxel size and shape (z, y, x), with the voxel
    centres of each axis (float32)."""

    origin: np.ndarray  # (3,) float64
    voxel: np.ndarray  # (3,) float64
    shape: tuple[int, int, int]
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def make(
        cls, origin_nm: Sequence[float], voxel_nm: float | Sequence[float], shape: Sequence[int]
    ) -> _Grid:
        origin = np.asarray(origin_nm, dtype=np.float64)
        shape = tuple(int(n) for n in shape)
        voxel = np.broadcast_to(np.asarray(voxel_nm, dtype=np.float64), (3,))
        axes = tuple(
            (origin[i] + voxel[i] * np.arange(shape[i])).astype(np.float32) for i in range(3)
        )
        return cls(origin, voxel, shape, axes)  # type: ignore[arg-type]

    @property
    def hi(self) -> np.ndarray:
        """Centre of the last voxel, nm."""
        return self.origin + self.voxel * (np.array(self.shape) - 1)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Slices of the voxels whose centres fall in [lo, hi] (nm), or None if empty."""
        return _box_slices(lo, hi, self.origin, self.voxel, self.shape)

    def offsets(self, sl: tuple[slice, slice, slice], centre: np.ndarray) -> list[np.ndarray]:
        """Voxel centres of box ``sl`` minus ``centre`` (nm), per axis, broadcastable (float32)."""
        return [(self.axes[i][sl[i]] - np.float32(centre[i])).reshape(_bshape(i)) for i in range(3)]


@dataclass(frozen=True)
class _Canvas:
    """What a render paints: label codes, and per voxel the distance (nm) inside its cell and
    the cell's index (-1: none), on a grid's shape; the cells whose cap reaches the grid."""

    codes: np.ndarray  # uint16
    inside: np.ndarray  # float32
    owner: np.ndarray  # int16
    present: list[int]


@dataclass
class Scene:
    """Analytic phantom tissue of one dataset, in nm; ``render`` samples it on any grid."""

    extent_nm: np.ndarray
    cells: list[_Cell]
    shapes: list[_Shape]
    wobble: list[tuple[np.ndarray, float, float]]  # (wave vector 1/nm, phase, amplitude nm)
    anchors: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._seeds = np.array([c.seed for c in self.cells])
        self._radii = np.array([c.radius for c in self.cells])
        # bisectors that cut cell k's cap: the only planes that can bound cell k
        sep = np.sqrt(((self._seeds[:, None] - self._seeds[None]) ** 2).sum(axis=-1))
        self._cutting = [
            [j for j in range(len(self.cells)) if j != k and sep[k, j] < 2 * self._radii[k]]
            for k in range(len(self.cells))
        ]
        if self.shapes:
            centres = np.array([s.centre for s in self.shapes])
            reach = np.array([np.broadcast_to(s.reach, (3,)) for s in self.shapes])
            self._lo, self._hi = centres - reach, centres + reach
        else:
            self._lo = self._hi = np.zeros((0, 3))

    def render(
        self, origin_nm: Sequence[float], voxel_nm: float | Sequence[float], shape: Sequence[int]
    ) -> np.ndarray:
        """Label codes (uint16, ``shape`` voxels z y x) sampled at voxel centres.

        ``origin_nm`` is the centre of the first voxel; voxel ``i`` is at ``origin + i*voxel``.
        ``voxel_nm``: one size for all axes or ``(z, y, x)`` sizes (anisotropic grids), nm.
        """
        grid = _Grid.make(origin_nm, voxel_nm, shape)
        codes = np.full(grid.shape, CODE["ecs"], dtype=np.uint16)
        inside, owner, present = self._cells(grid)
        self._wobble_boundaries(grid, inside)
        interior = inside >= _ECS_GAP + _PM_NM
        codes[(inside >= _ECS_GAP) & ~interior] = CODE["pm"]
        codes[interior] = CYTO
        canvas = _Canvas(codes, inside, owner, present)
        self._paint_nuclei(grid, canvas)
        self._paint_organelles(grid, canvas)
        return codes

    def _cells(self, grid: _Grid) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Per voxel, the distance (nm) inside its cell's boundary and the cell's index (-1:
        none), and the cells whose cap reaches the grid.

        Cell k is the part of its sphere cap (radius R_k around the seed) on its side of every
        Voronoi bisector; "inside" is the distance to that boundary, min(cap, bisector planes).
        Cells are disjoint, so the running max over cells gives both owner and distance. Only
        the cap's bounding box is visited and only bisectors that cut the cap, which keeps this
        ~10x cheaper than a nearest-seed pass over the whole grid per seed.
        """
        inside = np.full(grid.shape, -np.inf, dtype=np.float32)
        owner = np.full(grid.shape, -1, dtype=np.int16)
        present: list[int] = []
        for k, cell in enumerate(self.cells):
            sl = grid.box(cell.seed - cell.radius, cell.seed + cell.radius)
            if sl is None:
                continue
            present.append(k)
            dz, dy, dx = grid.offsets(sl, cell.seed)
            value = np.float32(cell.radius) - np.sqrt(dz * dz + dy * dy + dx * dx)
            for j in self._cutting[k]:
                # signed distance to the bisector plane of (k, j), positive on k's side
                n = self._seeds[j] - cell.seed
                sep = float(np.linalg.norm(n))
                n = (n / sep).astype(np.float32)
                plane = np.float32(sep / 2) - ((dz * n[0] + dy * n[1]) + dx * n[2])
                np.minimum(value, plane, out=value)
            sub_inside, sub_owner = inside[sl], owner[sl]
            better = value > sub_inside
            np.copyto(sub_inside, value, where=better)
            np.copyto(sub_owner, np.int16(k), where=better)
        return inside, owner, present

    def _wobble_boundaries(self, grid: _Grid, inside: np.ndarray) -> None:
        """Boundaries wobble in y-x, modulated along z (separable: no extra full-grid sin)."""
        z = grid.axes[0][:, None, None]
        y, x = grid.axes[1][None, :, None], grid.axes[2][None, None, :]
        wobble = np.zeros(grid.shape[1:], dtype=np.float32)
        for wave, phase, amplitude in self.wobble:
            wobble += np.float32(amplitude) * np.sin(
                y[0, :, :] * np.float32(wave[1])
                + x[0, :, :] * np.float32(wave[2])
                + np.float32(phase)
            )
        wave_z = self.wobble[0][0][0] if self.wobble else 0.0
        inside += wobble[None] * (1.0 + 0.3 * np.sin(z * np.float32(wave_z)))

    def _paint_nuclei(self, grid: _Grid, canvas: _Canvas) -> None:
        """Nuclei: clipped to their cell, kept clear of the plasma membrane."""
        codes, inside, owner = canvas.codes, canvas.inside, canvas.owner
        for k in canvas.present:
            cell = self.cells[k]
            sl = grid.box(
                cell.nucleus_centre - cell.nucleus_semi, cell.nucleus_centre + cell.nucleus_semi
            )
            if sl is None:
                continue
            q = sum(
                ((grid.axes[i][sl[i]] - cell.nucleus_centre[i]) / cell.nucleus_semi[i]).reshape(
                    _bshape(i)
                )
                ** 2
                for i in range(3)
            )
            clear = _ECS_GAP + _PM_NM + _NUCLEUS_CLEARANCE_NM
            mask = (q < 1.0) & (owner[sl] == k) & (inside[sl] > clear)
            codes[sl][mask] = NUC_BASE + cell.nucleus_id

    def _paint_organelles(self, grid: _Grid, canvas: _Canvas) -> None:
        """Organelles, in generation order (ER first, vesicles last), each painted only over
        the codes it may replace (``allowed``) within its own cell."""
        hit = np.flatnonzero(((self._lo <= grid.hi) & (self._hi >= grid.origin)).all(axis=1))
        codes, inside, owner = canvas.codes, canvas.inside, canvas.owner
        near_set = set(canvas.present)
        for index in hit:
            part = self.shapes[index]
            if part.cell not in near_set:
                continue
            sl = grid.box(part.centre - part.reach, part.centre + part.reach)
            if sl is None:
                continue
            sdf = part.sdf(*grid.offsets(sl, part.centre))
            sub = codes[sl]
            ok = (owner[sl] == part.cell) & (
                inside[sl] >= _ECS_GAP + _PM_NM + _ORGANELLE_CLEARANCE_NM
            )
            lum_ok = ok & np.isin(sub, (*part.allowed, part.mem_code)) & (sdf < -part.mem_nm)
            mem_ok = ok & np.isin(sub, part.allowed) & (sdf < 0) & (sdf >= -part.mem_nm)
            sub[lum_ok] = part.lum_code
            sub[mem_ok] = part.mem_code


def _bshape(axis: int) -> tuple[int, int, int]:
    return tuple(-1 if i == axis else 1 for i in range(3))  # type: ignore[return-value]


def _box_slices(
    lo: np.ndarray,
    hi: np.ndarray,
    origin: np.ndarray,
    voxel_nm: float | np.ndarray,
    shape: Sequence[int],
) -> tuple[slice, slice, slice] | None:
    """Voxel slices of the grid whose centres fall in [lo, hi] (nm), or None if empty.

    ``voxel_nm``: scalar or per-axis ``(z, y, x)`` voxel size, nm."""
    start = np.maximum(np.ceil((lo - origin) / voxel_nm), 0).astype(int)
    stop = np.minimum(np.floor((hi - origin) / voxel_nm) + 1, shape).astype(int)
    if (stop <= start).any():
        return None
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _frame(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal rows (normal, u, v) with a random in-plane rotation."""
    helper = _unit(rng)
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return np.stack([normal, u, np.cross(normal, u)])


def _grid_cells(rng: np.random.Generator, extent: np.ndarray, cell_nm: float) -> list[_Cell]:
    """Cells on a jittered grid in y-x, ``cell_nm`` apart (at least two across x), plus a ring
    of neighbours outside the volume; in-volume cells first, so that nucleus ids 1, 2 are the
    visible cells A and B."""
    n_y = max(1, round(extent[1] / cell_nm))
    n_x = max(2, round(extent[2] / cell_nm))
    step_y, step_x = extent[1] / n_y, extent[2] / n_x
    cells: list[_Cell] = []
    positions = [(iy, ix) for iy in range(-1, n_y + 1) for ix in range(-1, n_x + 1)]
    positions.sort(key=lambda p: not (0 <= p[0] < n_y and 0 <= p[1] < n_x))
    for iy, ix in positions:
        seed = np.array(
            [
                extent[0] * rng.uniform(0.4, 0.6),
                (iy + 0.5 + rng.uniform(-0.06, 0.06)) * step_y,
                (ix + 0.5 + rng.uniform(-0.06, 0.06)) * step_x,
            ]
        )
        radius = 0.5 * float(np.hypot(step_y, step_x)) * rng.uniform(0.86, 0.94)
        semi = np.array(
            [
                rng.uniform(280.0, 360.0),
                step_y * rng.uniform(0.22, 0.28),
                step_x * rng.uniform(0.24, 0.3),
            ]
        )
        offset = np.array([0.0, *rng.uniform(-0.04, 0.04, size=2) * (step_y, step_x)])
        cells.append(_Cell(seed, radius, seed + offset, semi, nucleus_id=len(cells) + 1))
    return cells


class _SceneBuilder:
    """Draws a scene's organelles, cell by cell, from one random generator (the order of the
    draws is the scene's identity: changing it changes every demo dataset)."""

    def __init__(self, rng: np.random.Generator, extent: np.ndarray, cells: list[_Cell]) -> None:
        self.rng = rng
        self.extent = extent
        self.cells = cells
        self.seeds = np.array([c.seed for c in cells])
        self.shapes: list[_Shape] = []
        self.anchors: dict[str, np.ndarray] = {}
        self.cyto_er = (CYTO, CODE["er_mem"], CODE["er_lum"])

    def random_point(self, k: int) -> np.ndarray:
        """A point in cell k's cytoplasm within the volume's z range (outside its nucleus)."""
        rng, cell, extent = self.rng, self.cells[k], self.extent
        for _ in range(50):
            r = 0.85 * cell.radius * np.sqrt(rng.uniform())
            angle = rng.uniform(0, 2 * np.pi)
            p = np.array(
                [rng.uniform(-50.0, extent[0] + 50.0), cell.seed[1] + r * np.sin(angle),
                 cell.seed[2] + r * np.cos(angle)]
            )  # fmt: skip
            if (((p - cell.nucleus_centre) / (cell.nucleus_semi * 1.15)) ** 2).sum() <= 1.0:
                continue
            if int(np.argmin(((self.seeds - p) ** 2).sum(axis=1))) == k:
                return p
        return p

    def add_mito(self, k: int, centre: np.ndarray) -> None:
        rng = self.rng
        radius = rng.uniform(85.0, 130.0)
        half = _unit(rng) * rng.uniform(100.0, 420.0)
        self.shapes.append(
            _Shape("capsule", k, centre, (-half, half, radius), CODE["mito_mem"], CODE["mito_lum"],
                   _MITO_MEM_NM, self.cyto_er, np.abs(half) + radius)
        )  # fmt: skip
        for _ in range(rng.integers(4, 9)):
            along = rng.uniform(-1.0, 1.0) * half
            radial = _unit(rng) * rng.uniform(0.0, radius - _MITO_MEM_NM - 25.0)
            speck = rng.uniform(10.0, 14.0)
            self.shapes.append(
                _Shape("sphere", k, centre + along + radial, (speck,), CODE["mito_ribo"],
                       CODE["mito_ribo"], 0.0, (CODE["mito_lum"],), speck)
            )  # fmt: skip

    def _add_sphere(
        self, k: int, centre: np.ndarray, radius: float, organelle: str, mem_nm: float
    ) -> None:
        """A spherical organelle (``organelle``: ``ves`` or ``endo``) in cell k's cytoplasm."""
        self.shapes.append(
            _Shape("sphere", k, centre, (radius,), CODE[f"{organelle}_mem"],
                   CODE[f"{organelle}_lum"], mem_nm, self.cyto_er, radius)
        )  # fmt: skip

    def add_vesicle(self, k: int, centre: np.ndarray) -> None:
        self._add_sphere(k, centre, self.rng.uniform(32.0, 50.0), "ves", _ORGANELLE_MEM_NM)

    def add_endosome(self, k: int, centre: np.ndarray) -> None:
        self._add_sphere(k, centre, self.rng.uniform(90.0, 190.0), "endo", _ENDO_MEM_NM)

    def add_er_tube(self, k: int, start: np.ndarray) -> None:
        rng = self.rng
        p, direction = start, _unit(rng)
        radius = rng.uniform(30.0, 40.0)
        for _ in range(rng.integers(3, 7)):
            q = p + direction * rng.uniform(120.0, 280.0)
            half = (q - p) / 2
            self.shapes.append(
                _Shape("capsule", k, (p + q) / 2, (-half, half, radius), CODE["er_mem"],
                       CODE["er_lum"], _ORGANELLE_MEM_NM, (CYTO,), np.abs(half) + radius)
            )  # fmt: skip
            direction = direction + 0.8 * _unit(rng)
            direction /= np.linalg.norm(direction)
            p = q

    def add_er_sheet(self, k: int, centre: np.ndarray) -> None:
        rng = self.rng
        semi = np.array(
            [rng.uniform(30.0, 38.0), rng.uniform(220.0, 450.0), rng.uniform(150.0, 300.0)]
        )
        self.shapes.append(
            _Shape("ellipsoid", k, centre, (_frame(_unit(rng), rng), semi, rng.uniform(-0.0012, 0.0012)),
                   CODE["er_mem"], CODE["er_lum"], _ORGANELLE_MEM_NM, (CYTO,), 0.0)
        )  # fmt: skip

    def add_golgi(self, k: int, centre: np.ndarray, normal: np.ndarray) -> None:
        rng = self.rng
        frame = _frame(normal, rng)
        bend = rng.choice([-1.0, 1.0]) * rng.uniform(0.0006, 0.0012)
        n = int(rng.integers(4, 7))
        spacing = rng.uniform(72.0, 84.0)
        for i in range(n):
            semi = np.array(
                [rng.uniform(24.0, 28.0), rng.uniform(230.0, 380.0), rng.uniform(160.0, 260.0)]
            )
            self.shapes.append(
                _Shape("ellipsoid", k, centre + (i - (n - 1) / 2) * spacing * normal,
                       (frame, semi, bend), CODE["golgi_mem"], CODE["golgi_lum"],
                       _ORGANELLE_MEM_NM, self.cyto_er, 0.0)
            )  # fmt: skip

    def populate(self, k: int, boundary: np.ndarray) -> None:
        """Cell k's organelles at fixed densities per µm³ of visible cytoplasm (none when the
        cell is outside the volume); ``boundary``: midway between cells A and B."""
        rng, cell, extent = self.rng, self.cells[k], self.extent
        if ((cell.seed + cell.radius < 0) | (cell.seed - cell.radius > extent)).any():
            return  # invisible: no organelles needed
        # visible cytoplasm (µm³): the cap's disc times the volume's depth
        visible = np.pi * cell.radius**2 * min(2 * cell.radius, extent[0]) / 1e9
        # ER first: everything else may be painted over it.
        for _ in range(rng.poisson(3.0 * visible)):
            self.add_er_tube(k, self.random_point(k))
        for _ in range(rng.poisson(1.2 * visible)):
            self.add_er_sheet(k, self.random_point(k))
        golgi_centre = None
        if k <= 1 or rng.uniform() < 0.6:
            golgi_centre = self.perinuclear_golgi(k, boundary)
        for _ in range(rng.poisson(2.0 * visible)):
            self.add_mito(k, self.random_point(k))
        for _ in range(rng.poisson(0.8 * visible)):
            self.add_endosome(k, self.random_point(k))
        n_ves = rng.poisson(15.0 * visible)
        for i in range(n_ves):
            if golgi_centre is not None and i < n_ves // 2:
                # vesicles cluster around the Golgi, as in real cells
                offset = _unit(rng) * rng.uniform(150.0, 450.0) * np.array([0.4, 1.0, 1.0])
                self.add_vesicle(k, golgi_centre + offset)
            else:
                self.add_vesicle(k, self.random_point(k))

    def perinuclear_golgi(self, k: int, boundary: np.ndarray) -> np.ndarray:
        """A Golgi stack beside cell k's nucleus, stacked along y (cells A's and B's face the
        volume's centre in y); for A and B also its anchors and the organelles a crop there
        must see. Returns the stack's centre."""
        rng, cell, extent = self.rng, self.cells[k], self.extent
        side = 1.0 if cell.nucleus_centre[1] < extent[1] / 2 else -1.0
        if k > 1:
            side = rng.choice([-1.0, 1.0])
        normal = np.array([0.0, side, 0.25 * rng.normal()])
        normal /= np.linalg.norm(normal)
        centre = cell.nucleus_centre + normal * (cell.nucleus_semi[1] + rng.uniform(130.0, 170.0))
        centre[0] = np.clip(centre[0], 0.3 * extent[0], 0.7 * extent[0])
        self.add_golgi(k, centre, normal)
        if k > 1:
            return centre
        self.anchors["golgi_stack" if k == 0 else "golgi_b_stack"] = centre.copy()
        # 200 nm in front of the stack: an 800 nm crop there still holds the tip of the
        # nucleus behind the stack and mostly reaches the boundary it faces
        self.anchors["golgi_front" if k == 0 else "golgi_b_front"] = centre + 200 * normal
        towards_b = np.sign(boundary[2] - centre[2])
        self.anchors["golgi" if k == 0 else "golgi_b"] = np.array(
            [centre[0], centre[1], (centre[2] + boundary[2]) / 2]
        )
        # around the stack, on the boundary side: what a crop there must also see
        for dy in (-1.0, 1.0):
            self.add_mito(k, centre + np.array([0.0, dy * 280.0, towards_b * 300.0]))
        self.add_endosome(k, centre + np.array([0.0, 0.0, towards_b * 420.0]))
        for _ in range(2):
            self.add_er_tube(k, centre + np.array([0.0, rng.uniform(-300, 300), towards_b * 200.0]))
        return centre


def build_scene(
    rng: np.random.Generator, em_shape: Sequence[int], cell_nm: float = 1800.0
) -> Scene:
    """Random phantom tissue filling an EM volume of ``em_shape`` voxels at 8 nm.

    ``cell_nm``: target spacing of the cell grid in y-x (nm); cells, their nuclei (in y-x) and
    the organelle counts grow with it, organelles keep their size.

    Cells sit on a jittered grid in y-x (at least two across x, plus a ring of neighbours outside
    the volume), each a Voronoi cell capped by a sphere (ECS lakes at the corners). Organelle
    counts follow fixed densities per µm³ of visible cytoplasm. The first two cells ("A", "B")
    each get a Golgi stack beside the nucleus with vesicles, mitochondria, an endosome and ER
    around it; the "golgi" (A) and "golgi_b" (B) anchors lie between the stack and the A|B
    boundary, so a crop centred there sees every class. "golgi_stack" and "golgi_b_stack" are the
    stacks' centres (a crop of about one cell's size centred there also reaches the nucleus and,
    with two rows of cells, the cell boundary the stack faces), "golgi_front" / "golgi_b_front"
    lie 200 nm in front of them (away from the nucleus); "boundary_bc" is midway between the
    seeds of B and the third cell.
    """
    extent = np.array(em_shape, dtype=np.float64) * EM_VOXEL_NM
    cells = _grid_cells(rng, extent, cell_nm)
    builder = _SceneBuilder(rng, extent, cells)
    a, b = cells[0], cells[1]
    boundary = (a.seed + b.seed) / 2
    for k in range(len(cells)):
        builder.populate(k, boundary)
    anchors = builder.anchors
    anchors["boundary"] = boundary
    anchors["boundary_bc"] = (b.seed + cells[2].seed) / 2
    anchors["nucleus"] = b.nucleus_centre.copy()  # nucleus id 2: the homogeneous crop
    anchors["nucleus_edge"] = a.nucleus_centre - np.array([0.0, 0.0, a.nucleus_semi[2]])
    anchors["centre"] = extent / 2
    wobble = [
        (
            _unit(rng) * 2 * np.pi / rng.uniform(600.0, 1500.0),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(8.0, 20.0),
        )
        for _ in range(3)
    ]
    return Scene(extent, cells, builder.shapes, wobble, anchors)
