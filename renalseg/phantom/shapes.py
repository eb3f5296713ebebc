"""Signed-distance primitives in patient LPS millimetres.

Every anatomical structure of the phantom is built from three primitives:
:class:`Ellipsoid` (a super-ellipsoid, so also rounded boxes), :class:`Tube` (a
tapered tube along a polyline: vessels, pyramids, calyces, bowel) and
:class:`CylinderZ` (a z-invariant elliptic cylinder: the body outline). Each gives an
approximate signed distance in mm (negative inside) on broadcastable coordinate
arrays, and a bounding box so the renderer evaluates it only where it can matter.

Hand-written (rather than taken from scikit-image's ``ellipsoid``/``draw``), because
the renderer needs *continuous* signed distances on arbitrary, anisotropic, oriented
grids to compute partial-volume coverage; scikit-image draws binary shapes on
isotropic index grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Shape", "Ellipsoid", "Tube", "CylinderZ", "Difference", "Intersection", "Perturbed", "rotation_matrix"]


def rotation_matrix(axis: np.ndarray | list, angle_rad: float) -> np.ndarray:
    """3 × 3 rotation by ``angle_rad`` about ``axis`` (Rodrigues).

    Example:
        >>> np.round(rotation_matrix([0, 0, 1], np.pi / 2) @ [1, 0, 0], 6).tolist()
        [0.0, 1.0, 0.0]
    """
    k = np.asarray(axis, dtype=float)
    k = k / np.linalg.norm(k)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * kx + (1 - np.cos(angle_rad)) * (kx @ kx)


class Shape:
    """A region of space with an approximate signed distance (mm, < 0 inside)."""

    #: thin structures (about a voxel across) are rendered supersampled
    thin: bool = False

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) LPS corners (x, y, z) of a box that holds the whole shape."""
        raise NotImplementedError

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance in mm at LPS points given as broadcastable arrays."""
        raise NotImplementedError

    def feature_mm(self) -> float:
        """Smallest feature size (mm): how finely the distance must be sampled."""
        raise NotImplementedError

    def transformed(self, rotation: np.ndarray, shift_mm: np.ndarray) -> Shape:
        """The shape moved rigidly: ``p -> rotation @ p + shift_mm``."""
        raise NotImplementedError

    def ramp_corrected(self, width_mm: float) -> Shape:
        """The shape to evaluate when coverage is a linear ramp ``width_mm`` wide.

        A ramp across a curved boundary adds volume (it treats the boundary as flat):
        for a tube of radius r the cross-section grows by π w²/12, for a sphere the
        volume by π r w²/3. Shapes that know their curvature shrink to cancel it.
        """
        return self


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """A super-ellipsoid ``(|u/a|^p + |v/b|^p + |w/c|^p)^(1/p) <= 1``.

    Args:
        centre_mm: LPS centre (x, y, z).
        axes: 3 × 3 array whose *columns* are the local u, v, w directions in LPS.
        semi_mm: semi-axes (a, b, c) along u, v, w.
        power: 2 for an ellipsoid; 3–6 for rounder-cornered boxes.

    Example:
        >>> e = Ellipsoid((0, 0, 0), np.eye(3), (10, 5, 2))
        >>> [round(float(e.sdf(np.array(v[0]), np.array(v[1]), np.array(v[2]))), 3)
        ...  for v in [(12, 0, 0), (0, 0, 0), (0, 4, 0)]]
        [2.0, -2.0, -1.0]
    """

    centre_mm: tuple[float, float, float]
    axes: np.ndarray
    semi_mm: tuple[float, float, float]
    power: float = 2.0

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        r = np.abs(np.asarray(self.axes, float)) * np.asarray(self.semi_mm, float)[None, :]
        half = np.sqrt((r**2).sum(axis=1)) if self.power <= 2 else r.sum(axis=1)
        c = np.asarray(self.centre_mm, float)
        return c - half - 1.0, c + half + 1.0

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        axes = np.asarray(self.axes, float)
        cx, cy, cz = (float(v) for v in self.centre_mm)
        dx, dy, dz = x - cx, y - cy, z - cz
        terms = []
        grads = []
        for k in range(3):
            s = float(self.semi_mm[k])
            t = (dx * axes[0, k] + dy * axes[1, k] + dz * axes[2, k]) * (1.0 / s)
            terms.append(t)
        p = float(self.power)
        if p == 2.0:
            q2 = terms[0] * terms[0] + terms[1] * terms[1] + terms[2] * terms[2]
            q = np.sqrt(q2)
            for k in range(3):
                grads.append(terms[k] * (1.0 / float(self.semi_mm[k])))
            g = np.sqrt(grads[0] ** 2 + grads[1] ** 2 + grads[2] ** 2) / np.maximum(q, 1e-6)
        else:
            a = [np.abs(t) for t in terms]
            qp = a[0] ** p + a[1] ** p + a[2] ** p
            q = qp ** (1.0 / p)
            qpow = np.maximum(q, 1e-6) ** (1.0 - p)
            for k in range(3):
                grads.append(qpow * a[k] ** (p - 1.0) * (1.0 / float(self.semi_mm[k])))
            g = np.sqrt(grads[0] ** 2 + grads[1] ** 2 + grads[2] ** 2)
        # near the centre the gradient vanishes; the distance is deep inside anyway
        g = np.maximum(g, 1.0 / max(self.semi_mm))
        # no point lies deeper inside than the smallest semi-axis
        return np.maximum((q - 1.0) / g, -min(self.semi_mm))

    def feature_mm(self) -> float:
        return float(min(self.semi_mm))

    def ramp_corrected(self, width_mm: float) -> Ellipsoid:
        if self.power != 2.0:
            return self
        semi = tuple(max(s - width_mm**2 / (12.0 * s), 0.5 * s) for s in self.semi_mm)
        return Ellipsoid(self.centre_mm, self.axes, semi, self.power)

    def transformed(self, rotation: np.ndarray, shift_mm: np.ndarray) -> Ellipsoid:
        centre = np.asarray(rotation) @ np.asarray(self.centre_mm, float) + np.asarray(shift_mm)
        return Ellipsoid(tuple(centre.tolist()), np.asarray(rotation) @ np.asarray(self.axes, float),
                         self.semi_mm, self.power)


@dataclass(frozen=True)
class Tube(Shape):
    """A tube of linearly varying radius along a polyline (capsule chain).

    Args:
        points_mm: (M, 3) LPS centreline points, M >= 2.
        radii_mm: (M,) radius at each point.
        thin: render supersampled (vessels about a voxel across).

    Example:
        >>> t = Tube(np.array([[0, 0, 0], [10, 0, 0.0]]), np.array([2.0, 1.0]))
        >>> round(float(t.sdf(np.array(5.0), np.array(3.0), np.array(0.0))), 3)
        1.5
    """

    points_mm: np.ndarray
    radii_mm: np.ndarray
    thin: bool = False

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(self.points_mm, float)
        r = float(np.max(self.radii_mm)) + 1.0
        return p.min(axis=0) - r, p.max(axis=0) + r

    def pieces(self, max_segments: int = 6) -> list[Tube]:
        """The tube cut into chunks of at most ``max_segments`` segments (tighter boxes)."""
        p = np.asarray(self.points_mm, float)
        r = np.asarray(self.radii_mm, float)
        out = []
        for start in range(0, len(p) - 1, max_segments):
            stop = min(start + max_segments, len(p) - 1)
            out.append(Tube(p[start:stop + 1], r[start:stop + 1], self.thin))
        return out

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        p = np.asarray(self.points_mm, float)
        r = np.asarray(self.radii_mm, float)
        a = p[:-1].astype(np.float32)
        d = (p[1:] - p[:-1]).astype(np.float32)
        length2 = np.maximum((d * d).sum(axis=1), np.float32(1e-12))
        r0 = r[:-1].astype(np.float32)
        dr = (r[1:] - r[:-1]).astype(np.float32)
        # a trailing segment axis: all segments of the piece at once
        ax = np.asarray(x)[..., None] - a[:, 0]
        ay = np.asarray(y)[..., None] - a[:, 1]
        az = np.asarray(z)[..., None] - a[:, 2]
        t = np.clip((ax * d[:, 0] + ay * d[:, 1] + az * d[:, 2]) / length2, 0.0, 1.0)
        ex = ax - t * d[:, 0]
        ey = ay - t * d[:, 1]
        ez = az - t * d[:, 2]
        dist = np.sqrt(ex * ex + ey * ey + ez * ez) - (r0 + t * dr)
        return dist.min(axis=-1)

    def feature_mm(self) -> float:
        return float(np.min(self.radii_mm))

    def ramp_corrected(self, width_mm: float) -> Tube:
        r = np.asarray(self.radii_mm, float)
        return Tube(self.points_mm, np.sqrt(np.maximum(r**2 - width_mm**2 / 12.0, (0.5 * r) ** 2)), self.thin)

    def transformed(self, rotation: np.ndarray, shift_mm: np.ndarray) -> Tube:
        p = np.asarray(self.points_mm, float) @ np.asarray(rotation).T + np.asarray(shift_mm)
        return Tube(p, np.asarray(self.radii_mm, float), self.thin)


@dataclass(frozen=True)
class CylinderZ(Shape):
    """An elliptic cylinder along the patient's z axis, limited to ``z_range_mm``.

    Args:
        centre_xy_mm: LPS (x, y) of the axis.
        semi_mm: semi-axes (a, b) before the in-plane rotation.
        angle_rad: in-plane rotation of the ellipse about z.
        z_range_mm: (low, high) extent in z.

    Example:
        >>> c = CylinderZ((0.0, 0.0), (20.0, 10.0), 0.0, (-50.0, 50.0))
        >>> round(float(c.sdf(np.array(0.0), np.array(12.0), np.array(0.0))), 3)
        2.0
    """

    centre_xy_mm: tuple[float, float]
    semi_mm: tuple[float, float]
    angle_rad: float
    z_range_mm: tuple[float, float]
    power: float = 2.0

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.semi_mm) + 1.0
        cx, cy = self.centre_xy_mm
        return (np.array([cx - r, cy - r, self.z_range_mm[0] - 1.0]),
                np.array([cx + r, cy + r, self.z_range_mm[1] + 1.0]))

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        dx, dy = x - self.centre_xy_mm[0], y - self.centre_xy_mm[1]
        a, b = self.semi_mm
        u = (dx * c + dy * s) * (1.0 / a)
        v = (-dx * s + dy * c) * (1.0 / b)
        p = float(self.power)
        au, av = np.abs(u), np.abs(v)
        q = (au**p + av**p) ** (1.0 / p)
        qpow = np.maximum(q, 1e-6) ** (1.0 - p)
        g = qpow * np.sqrt((au ** (p - 1) / a) ** 2 + (av ** (p - 1) / b) ** 2)
        inplane = np.maximum((q - 1.0) / np.maximum(g, 1.0 / max(a, b)), -min(a, b))
        zlo, zhi = self.z_range_mm
        zdist = np.maximum(zlo - z, z - zhi)
        return np.maximum(inplane, zdist)

    def feature_mm(self) -> float:
        return float(min(self.semi_mm))

    def transformed(self, rotation: np.ndarray, shift_mm: np.ndarray) -> CylinderZ:
        rotation = np.asarray(rotation, float)
        if not np.allclose(rotation[:, 2], [0, 0, 1]):
            raise ValueError("CylinderZ can only be rotated about the z axis.")
        centre = rotation[:2, :2] @ np.asarray(self.centre_xy_mm, float) + np.asarray(shift_mm)[:2]
        angle = self.angle_rad + float(np.arctan2(rotation[1, 0], rotation[0, 0]))
        dz = float(shift_mm[2])
        return CylinderZ(tuple(centre.tolist()), self.semi_mm, angle,
                         (self.z_range_mm[0] + dz, self.z_range_mm[1] + dz), self.power)


@dataclass(frozen=True)
class Difference(Shape):
    """``keep`` minus ``cut``: max(d_keep, -d_cut); the box is ``keep``'s."""

    keep: Shape
    cut: Shape

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        return self.keep.bbox_mm()

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(self.keep.sdf(x, y, z), -self.cut.sdf(x, y, z))

    def feature_mm(self) -> float:
        return min(self.keep.feature_mm(), self.cut.feature_mm())

    def transformed(self, rotation: np.ndarray, shift_mm: np.ndarray) -> Difference:
        return Difference(self.keep.transformed(rotation, shift_mm), self.cut.transformed(rotation, shift_mm))


@dataclass(frozen=True)
class Intersection(Shape):
    """The part of ``shape`` inside ``within``: max(d_shape, d_within); ``shape``'s box."""

    shape: Shape
    within: Shape

    @property
    def thin(self) -> bool:  # type: ignore[override]
        return self.shape.thin

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bbox_mm()

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(self.shape.sdf(x, y, z), self.within.sdf(x, y, z))

    def feature_mm(self) -> float:
        return min(self.shape.feature_mm(), self.within.feature_mm())

    def ramp_corrected(self, width_mm: float) -> Intersection:
        return Intersection(self.shape.ramp_corrected(width_mm), self.within)

    def transformed(self, rotation: np.ndarray, shift_mm: np.ndarray) -> Intersection:
        return Intersection(self.shape.transformed(rotation, shift_mm), self.within.transformed(rotation, shift_mm))


@dataclass(frozen=True)
class Perturbed(Shape):
    """A shape whose surface is moved in and out by a smooth random field (lobulation).

    The signed distance gets ``amplitude_mm`` × a sum of plane waves (unit standard
    deviation), so organs lose their perfect ellipsoid outline.

    Args:
        shape: the shape to perturb.
        amplitude_mm: standard deviation of the surface displacement.
        waves: (K, 4) rows ``(kx, ky, kz, phase)``: wave vectors in rad/mm (LPS) and phases.

    Example:
        >>> s = Perturbed.random(Ellipsoid((0, 0, 0), np.eye(3), (20, 20, 20)), 1.0, (20.0, 40.0),
        ...                      np.random.default_rng(0))
        >>> v = s.sdf(np.linspace(-30, 30, 61)[:, None, None], np.zeros((1, 61, 1)), np.zeros((1, 1, 61)))
        >>> bool(np.abs(v - s.shape.sdf(np.linspace(-30, 30, 61)[:, None, None], np.zeros((1, 61, 1)),
        ...                                np.zeros((1, 1, 61)))).max() < 4.0)
        True
    """

    shape: Shape
    amplitude_mm: float
    waves: np.ndarray

    @classmethod
    def random(cls, shape: Shape, amplitude_mm: float, wavelength_mm: tuple[float, float],
               rng: np.random.Generator, n_waves: int = 4) -> Perturbed:
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        k = 2 * np.pi / rng.uniform(*wavelength_mm, size=n_waves)
        waves = np.concatenate([directions * k[:, None], rng.uniform(0, 2 * np.pi, (n_waves, 1))], axis=1)
        return cls(shape, float(amplitude_mm), waves)

    @property
    def thin(self) -> bool:  # type: ignore[override]
        return self.shape.thin

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.shape.bbox_mm()
        margin = 3.0 * self.amplitude_mm
        return lo - margin, hi + margin

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = self.shape.sdf(x, y, z)
        scale = self.amplitude_mm / np.sqrt(len(self.waves) / 2.0)
        for kx, ky, kz, phase in np.asarray(self.waves, float):
            d = d + np.float32(scale) * np.sin(np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z
                                               + np.float32(phase))
        return d

    def feature_mm(self) -> float:
        shortest = 2 * np.pi / float(np.linalg.norm(np.asarray(self.waves)[:, :3], axis=1).max())
        return min(self.shape.feature_mm(), shortest)

    def ramp_corrected(self, width_mm: float) -> Perturbed:
        return Perturbed(self.shape.ramp_corrected(width_mm), self.amplitude_mm, self.waves)

    def transformed(self, rotation: np.ndarray, shift_mm: np.ndarray) -> Perturbed:
        waves = np.asarray(self.waves, float).copy()
        k = waves[:, :3] @ np.asarray(rotation, float).T
        waves[:, 3] -= k @ np.asarray(shift_mm, float)
        waves[:, :3] = k
        return Perturbed(self.shape.transformed(rotation, shift_mm), self.amplitude_mm, waves)
