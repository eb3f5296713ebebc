"""One kidney with its artery tree, vein, collecting system and optional tumour.

All geometry is in patient LPS millimetres. A kidney has a local frame: ``u`` along
its long axis (towards the upper pole), ``v`` lateral (away from the spine) and ``w``
anterior; the hilum opens medially (``-v``) and, after the usual rotation about the
long axis, faces antero-medially. At the hilum the structures lie in the textbook
order vein (anterior), artery, pelvis (posterior).

The artery tree follows the segmental anatomy (Graves): the main renal artery
divides into an anterior division (apical, upper anterior, lower anterior and
inferior segments) and a posterior division (posterior segment); each segmental
artery gives one lobar artery per pyramid, which splits into 2–4 interlobar arteries
running along the pyramid's sides to its base, where each ends in 1–3 arcuate
arteries curving along the cortico-medullary junction. Radii follow Murray's law at
every junction (``r_parent_end³ = Σ r_child³``) with a gentle taper along each
branch, so radius never increases from the root to the leaves. Variants: early
(pre-hilar) division and an accessory polar artery from the aorta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.interpolate import CubicSpline

from renalseg.phantom.shapes import Difference, Ellipsoid, Intersection, Perturbed, Shape, Tube, rotation_matrix

__all__ = ["Branch", "Kidney", "build_kidney", "kidney_frame", "smooth_path", "push_out_of_sphere"]


def smooth_path(control_mm: np.ndarray, step_mm: float = 1.0) -> np.ndarray:
    """A smooth curve (cubic spline, chord-length parameter) through control points.

    Args:
        control_mm: (K, 3) points, K >= 2.
        step_mm: approximate distance between output points.

    Returns:
        (M, 3) points from the first to the last control point.

    Example:
        >>> p = smooth_path(np.array([[0, 0, 0], [10, 0, 0], [20, 5, 0.0]]), 1.0)
        >>> p[0].tolist(), p[-1].tolist(), len(p) > 15
        ([0.0, 0.0, 0.0], [20.0, 5.0, 0.0], True)
    """
    control = np.asarray(control_mm, float)
    chords = np.linalg.norm(np.diff(control, axis=0), axis=1)
    keep = np.concatenate([[True], chords > 1e-6])
    control = control[keep]
    if len(control) < 2:
        return np.repeat(control, 2, axis=0)
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))])
    n = max(2, int(np.ceil(t[-1] / step_mm)) + 1)
    samples = np.linspace(0.0, t[-1], n)
    if len(control) == 2:
        return control[0] + (samples / t[-1])[:, None] * (control[1] - control[0])
    return CubicSpline(t, control, axis=0, bc_type="natural")(samples)


def push_out_of_sphere(points: np.ndarray, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    """Move points that lie within ``radius_mm`` of ``centre`` radially onto that sphere.

    Example:
        >>> push_out_of_sphere(np.array([[1.0, 0, 0], [5.0, 0, 0]]), np.zeros(3), 2.0).tolist()
        [[2.0, 0.0, 0.0], [5.0, 0.0, 0.0]]
    """
    offset = points - centre
    dist = np.linalg.norm(offset, axis=1)
    inside = dist < radius_mm
    if not inside.any():
        return points
    out = points.copy()
    safe = np.where(dist[inside] < 1e-6, 1e-6, dist[inside])
    out[inside] = centre + offset[inside] * (radius_mm / safe)[:, None]
    return out


@dataclass
class Branch:
    """One artery branch (a smooth tapered tube)."""

    name: str
    kind: str
    parent: int | None
    control_mm: np.ndarray
    children: list[int] = field(default_factory=list)
    flow: float = 0.0
    r_start_mm: float = 0.0
    r_end_mm: float = 0.0
    points_mm: np.ndarray | None = None

    def tube(self) -> Tube:
        pts = self.points_mm
        n = len(pts)
        radii = np.linspace(self.r_start_mm, self.r_end_mm, n)
        return Tube(pts, radii, thin=self.r_start_mm < 1.5)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.diff(self.points_mm, axis=0), axis=1).sum())

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "parent": self.parent,
            "radius_start_mm": round(self.r_start_mm, 3),
            "radius_end_mm": round(self.r_end_mm, 3),
            "length_mm": round(self.length_mm, 2),
            "start_mm": [round(float(v), 2) for v in self.points_mm[0]],
            "end_mm": [round(float(v), 2) for v in self.points_mm[-1]],
        }


@dataclass
class Kidney:
    """A built kidney: its shapes per tissue and its description."""

    side: Literal["left", "right"]
    centre_mm: np.ndarray
    axes: np.ndarray  # columns u (long), v (lateral), w (anterior)
    semi_mm: tuple[float, float, float]
    outer: Ellipsoid
    layers: list[tuple[str, list[Shape], list[np.ndarray]]]
    branches: list[Branch]
    hilum_artery_mm: np.ndarray
    hilum_vein_mm: np.ndarray
    params: dict
    #: the renal lobes: per pyramid its apex and base (LPS mm), base radius (mm) and the
    #: segmental artery that supplies it (the truth of ``renalseg synth`` territories)
    lobes: list[dict] = field(default_factory=list)

    def local_to_world(self, uvw: np.ndarray) -> np.ndarray:
        return self.centre_mm + np.asarray(uvw, float) @ self.axes.T

    def bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        return self.outer.bbox_mm()


def _ray_to_ellipsoid(origin: np.ndarray, direction: np.ndarray, semi: np.ndarray) -> float:
    """Distance from ``origin`` (inside) along unit ``direction`` to the ellipsoid surface."""
    o = origin / semi
    d = direction / semi
    a = float(d @ d)
    b = 2.0 * float(o @ d)
    c = float(o @ o) - 1.0
    return float((-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _perpendicular_frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0, 0]) if abs(axis[0]) < 0.9 else np.array([0, 1.0, 0])
    p1 = _unit(np.cross(axis, helper))
    return p1, np.cross(axis, p1)


def kidney_frame(side: str, coronal_deg: float, sagittal_deg: float, axial_deg: float) -> np.ndarray:
    """Columns (u long axis, v lateral, w anterior) of a kidney in LPS.

    The upper pole tilts medially by ``coronal_deg`` and posteriorly by
    ``sagittal_deg``; the hilum turns anteriorly by ``axial_deg``.
    """
    lateral = 1.0 if side == "left" else -1.0  # patient left is +x in LPS
    u = np.array([0.0, 0.0, 1.0])
    v = np.array([lateral, 0.0, 0.0])
    w = np.array([0.0, -1.0, 0.0])  # anterior is -y in LPS
    a = np.radians(coronal_deg)
    u, v = np.cos(a) * u - np.sin(a) * v, np.sin(a) * u + np.cos(a) * v
    b = np.radians(sagittal_deg)
    u, w = np.cos(b) * u - np.sin(b) * w, np.sin(b) * u + np.cos(b) * w
    g = np.radians(axial_deg)
    v, w = np.cos(g) * v - np.sin(g) * w, np.sin(g) * v + np.cos(g) * w
    return np.stack([u, v, w], axis=1)


def build_kidney(rng: np.random.Generator, side: Literal["left", "right"], centre_mm: np.ndarray, *,
                 ostium_mm: np.ndarray, artery_via_mm: list[np.ndarray] | None = None,
                 accessory_ostium_mm: np.ndarray | None = None, vein_end_mm: np.ndarray,
                 vein_via_mm: list[np.ndarray] | None = None, tumour: bool | None = None,
                 early_branching: bool | None = None, accessory: bool | None = None,
                 rotation: np.ndarray | None = None, tumour_enhancement: str = "hypo",
                 malrotated: bool = False, tumour_diameter_mm: tuple[float, float] | None = None,
                 lower_pole_medial: bool = False, vein_limbs_mm: Sequence[Sequence[np.ndarray]] = (),
                 vein_narrow_mm: Sequence[tuple[np.ndarray, float]] = (), tumour_site: str = "any") -> Kidney:
    """Build one kidney, its artery tree from ``ostium_mm`` and its vein to ``vein_end_mm``.

    Args:
        rng: the case's random generator (all sizes, angles and variants).
        side: the patient's side.
        centre_mm: LPS centre of the kidney.
        ostium_mm: LPS root of the main renal artery (on the aortic wall).
        artery_via_mm: points the main artery passes near (e.g. behind the IVC).
        accessory_ostium_mm: root of an accessory polar artery, if one is drawn.
        vein_end_mm: where the renal vein ends (in the IVC).
        vein_via_mm: points the vein passes near (e.g. in front of the aorta).
        tumour, early_branching, accessory: force a variant on/off (None: random,
            tumour 30%, early branching 20%, accessory 25%).
        rotation: 3 × 3 rotation of the whole patient in the scanner (yaw), applied
            to the kidney's frame.
        tumour_enhancement: "hypo" or "hyper" (one per scene: one tumour tissue value).
        malrotated: the hilum faces forward (axial rotation 75–100° instead of 20–45°).
        tumour_diameter_mm: the tumour's diameter range (default 10–70 mm); with it a
            tumour is drawn whatever ``tumour`` says. Both options map the values drawn
            for the default onto their own ranges, so the random stream is the same.
        lower_pole_medial: the lower pole, not the upper, tilts towards the midline by
            the coronal angle drawn (a horseshoe kidney's halves); the stream is the same.
        vein_limbs_mm: further limbs of the renal vein (a circumaortic vein's posterior
            limb), each the points it passes ending in the IVC; it leaves the trunk where
            the trunk comes nearest its first point, at 0.7 of the trunk's radius.
        vein_narrow_mm: (point, radius) where the vein is squeezed (between the aorta and
            the spine): the trunk or limb that passes the point narrows towards that radius
            within about 20 mm of it. Neither draws from ``rng``.
        tumour_site: ``"any"`` (default: anywhere but the hilum) or ``"hilar"``: in the
            renal hilum, at its upper or lower lip (as the direction drawn for the default
            points), a tumour unless ``tumour`` is False; the main vessels pass it as they
            would (beside it, against it or through it). The stream is the same.

    Returns:
        The :class:`Kidney` with its tissue layers in painter's order.
    """
    centre = np.asarray(centre_mm, float)
    length = rng.uniform(100.0, 130.0)
    width = rng.uniform(50.0, 70.0)
    thickness = rng.uniform(30.0, 50.0)
    a, b, c = length / 2, width / 2, thickness / 2
    semi = np.array([a, b, c])
    angles = (rng.uniform(5, 20), rng.uniform(5, 20), rng.uniform(20, 45))
    if malrotated:  # incomplete rotation: the hilum faces anteriorly
        angles = (angles[0], angles[1], 75.0 + (angles[2] - 20.0))
    if lower_pole_medial:
        angles = (-angles[0], angles[1], angles[2])
    axes = kidney_frame(side, *angles)
    if rotation is not None:
        axes = np.asarray(rotation, float) @ axes
    cortex_mm = rng.uniform(5.0, 8.0)
    n_pyramids = int(rng.integers(8, 13))
    if tumour is None:
        tumour = bool(rng.random() < 0.3) or tumour_site == "hilar"
    if tumour_diameter_mm is not None:
        tumour = True
    if early_branching is None:
        early_branching = bool(rng.random() < 0.2)
    if accessory is None:
        accessory = bool(rng.random() < 0.25)
    if accessory_ostium_mm is None:
        accessory = False

    def world(uvw) -> np.ndarray:
        return centre + np.asarray(uvw, float) @ axes.T

    outer = Ellipsoid(tuple(centre), axes, (a, b, c))
    notch = Ellipsoid(tuple(world([0, -1.05 * b, 0.1 * c])), axes, (0.36 * a, 0.42 * b, 0.6 * c))
    sinus_c = np.array([0.0, -0.3 * b, 0.0])
    sinus_semi = np.array([0.55 * a, 0.45 * b, 0.35 * c])
    sinus = Ellipsoid(tuple(world(sinus_c)), axes, tuple(sinus_semi))

    # -- pyramids: rays from the sinus centre, over the lateral hemisphere and poles
    n_rows = n_pyramids // 2
    pyramids = []  # (apex, base, r_base, u_frac, w_sign)
    row_u = np.linspace(-0.78, 0.78, n_rows)
    slots = []
    for j, uf in enumerate(row_u):
        for sign in (1.0, -1.0):
            slots.append((uf, sign * rng.uniform(25, 55)))
    if n_pyramids % 2:
        slots.append((row_u[n_rows // 2] * 0.3, rng.uniform(-10, 10)))
    for uf, phi in slots:
        uf = uf + rng.uniform(-0.05, 0.05)
        ph = np.radians(phi)
        scale = 1.0 - 0.45 * abs(uf)
        d = _unit(np.array([uf * 1.5, np.cos(ph) * scale, np.sin(ph) * scale]))
        l_outer = _ray_to_ellipsoid(sinus_c, d, semi)
        l_sinus = 1.0 / np.sqrt(float(((d / sinus_semi) ** 2).sum()))
        apex = sinus_c + (l_sinus - 1.0) * d
        base = sinus_c + max(l_outer - cortex_mm - 0.5, l_sinus + 3.0) * d
        depth = float(np.linalg.norm(base - apex))
        r_base = float(min(rng.uniform(6.0, 9.0), 0.5 * depth + 3.0))
        pyramids.append((world(apex), world(base), r_base, float(uf), 1.0 if phi >= 0 else -1.0))

    # -- tumour (before vessels: vessels are displaced around it)
    tumour_params: dict = {"present": bool(tumour)}
    tumour_shape = None
    tumour_centre = None
    tumour_r = 0.0
    if tumour:
        diameter = rng.uniform(10.0, 70.0)
        if tumour_diameter_mm is not None:
            low, high = tumour_diameter_mm
            diameter = low + (diameter - 10.0) / 60.0 * (high - low)
        tumour_r = diameter / 2
        exophytic = bool(rng.random() < 0.6 or diameter > 45)
        while True:
            direction = _unit(rng.normal(size=3))
            if direction[1] > -0.3:  # not in the hilum
                break
        surface = _ray_to_ellipsoid(np.zeros(3), direction, semi) * direction
        normal = _unit(surface / semi**2)
        if exophytic:
            local_c = surface + normal * tumour_r * rng.uniform(-0.1, 0.4)
        else:
            depth = min(tumour_r + rng.uniform(2.0, 6.0), 0.9 * float(np.linalg.norm(surface)))
            local_c = surface - normal * depth
        if tumour_site == "hilar":  # the hilum's upper or lower lip, as the direction drawn points
            direction = _unit(np.array([0.45 * np.sign(direction[0] or 1.0) + 0.1 * direction[0], -0.85,
                                        0.3 * direction[2]]))
            surface = _ray_to_ellipsoid(np.zeros(3), direction, semi) * direction
            local_c = surface - _unit(surface / semi**2) * tumour_r * 0.2
        tumour_centre = world(local_c)
        tumour_axes = rotation_matrix(rng.normal(size=3), rng.uniform(0, np.pi))
        tsemi = (tumour_r, tumour_r * rng.uniform(0.85, 1.0), tumour_r * rng.uniform(0.85, 1.0))
        tumour_shape = Ellipsoid(tuple(tumour_centre), tumour_axes, tsemi)
        tumour_params.update({
            "diameter_mm": round(float(diameter), 1),
            "growth": "hilar" if tumour_site == "hilar" else "exophytic" if exophytic else "endophytic",
            "enhancement": tumour_enhancement,
            "centre_mm": [round(float(v), 2) for v in tumour_centre],
        })

    # simple cortical cysts (water density), common in adults
    cysts: list[Shape] = []
    obstacles: list[tuple[np.ndarray, float]] = []
    if tumour_centre is not None:
        obstacles.append((tumour_centre, tumour_r))
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 4))):
            direction = _unit(rng.normal(size=3))
            if direction[1] < -0.3:
                direction[1] = -direction[1]  # keep away from the hilum
            surface = _ray_to_ellipsoid(np.zeros(3), direction, semi) * direction
            r_cyst = float(rng.uniform(3.0, 15.0))
            centre_c = world(surface * rng.uniform(0.75, 1.0))
            cysts.append(Ellipsoid(tuple(centre_c), np.eye(3), (r_cyst, r_cyst, r_cyst)))
            obstacles.append((centre_c, r_cyst))

    def displace(points: np.ndarray, radius: float) -> np.ndarray:
        for centre_o, r_o in obstacles:
            points = push_out_of_sphere(points, centre_o, r_o + radius + 1.5)
        return points

    # -- collecting system: pelvis (posterior at the hilum), ureter, calyces
    pelvis_c = world([0.0, -0.8 * b, -0.3 * c])
    pelvis = Ellipsoid(tuple(pelvis_c), axes, (0.16 * a, 0.28 * b, 0.22 * c))
    ureter_ctrl = np.stack([pelvis_c, world([-0.3 * a, -1.25 * b, -0.35 * c]),
                            world([-0.6 * a, -1.35 * b, -0.3 * c]) + np.array([0, 0, -40.0])])
    ureter_path = smooth_path(ureter_ctrl, 2.0)
    ureter = Tube(ureter_path, np.full(len(ureter_path), 2.5))
    collecting: list[Shape] = [pelvis]
    majors = {1.0: world([0.42 * a, -0.3 * b, -0.05 * c]), -1.0: world([-0.42 * a, -0.3 * b, -0.05 * c])}
    r_major = rng.uniform(2.5, 3.5)
    for end in majors.values():
        path = smooth_path(np.stack([pelvis_c, (pelvis_c + end) / 2 + rng.normal(0, 1.5, 3), end]), 1.5)
        path = displace(path, r_major)
        collecting.append(Tube(path, np.full(len(path), r_major)))
    for apex, base, r_base, uf, _ in pyramids:
        axis = _unit(base - apex)
        start = majors[1.0] if uf > 0.15 else majors[-1.0] if uf < -0.15 else pelvis_c
        cup = apex - axis * 1.0
        path = displace(smooth_path(np.stack([start, (start + cup) / 2 + rng.normal(0, 1.0, 3), cup]), 1.0), 2.0)
        r_minor = rng.uniform(1.5, 2.5)
        collecting.append(Tube(path, np.full(len(path), r_minor)))

    inner = Ellipsoid(tuple(centre), axes, tuple(semi - cortex_mm))
    medulla: list[Shape] = []
    for apex, base, r_base, _, _ in pyramids:
        medulla.append(Intersection(Tube(np.stack([apex, base]), np.array([rng.uniform(1.5, 2.5), r_base])), inner))

    # -- artery tree -------------------------------------------------------------
    hilum_artery = world([0.0, -0.95 * b, 0.05 * c])
    hilum_vein = world([0.0, -0.92 * b, 0.4 * c])
    branches: list[Branch] = []

    def add(name: str, kind: str, parent: int | None, control: list[np.ndarray]) -> int:
        branches.append(Branch(name, kind, parent, np.stack(control)))
        idx = len(branches) - 1
        if parent is not None:
            branches[parent].children.append(idx)
        return idx

    segments: dict[str, list[int]] = {"apical": [], "upper_anterior": [], "lower_anterior": [],
                                      "inferior": [], "posterior": []}
    for i, (_, _, _, uf, ws) in enumerate(pyramids):
        if uf > 0.5:
            segments["apical"].append(i)
        elif uf < -0.5:
            segments["inferior"].append(i)
        elif ws < 0:
            segments["posterior"].append(i)
        elif uf >= 0:
            segments["upper_anterior"].append(i)
        else:
            segments["lower_anterior"].append(i)
    if len(segments["posterior"]) >= 3:
        post = sorted(segments.pop("posterior"), key=lambda i: -pyramids[i][3])
        half = len(post) // 2
        segments["posterior_upper"], segments["posterior_lower"] = post[:half], post[half:]
    segments = {k: v for k, v in segments.items() if v}

    accessory_pole = None
    if accessory:
        poles = [k for k in ("apical", "inferior") if k in segments]
        if poles:
            accessory_pole = poles[int(rng.integers(len(poles)))]
        else:
            accessory = False

    to_hilum = hilum_artery - np.asarray(ostium_mm, float)
    via = [np.asarray(p, float) for p in (artery_via_mm or [])]
    if early_branching:
        division = np.asarray(ostium_mm, float) + to_hilum * rng.uniform(0.45, 0.7) + rng.normal(0, 1.5, 3)
    else:
        division = world([0.0, -0.82 * b, 0.0]) + rng.normal(0, 1.0, 3)
    mid = np.asarray(ostium_mm, float) + (division - np.asarray(ostium_mm, float)) * 0.5 + rng.normal(0, 2.0, 3)
    main_ctrl = [np.asarray(ostium_mm, float), *via] if via else [np.asarray(ostium_mm, float), mid]
    main = add("main_renal_artery", "main", None, [*main_ctrl, division])
    ant_end = (world([0.15 * a, -0.6 * b, 0.25 * c]) if not early_branching else hilum_artery + axes[:, 2] * 3.0)
    post_end = (world([0.0, -0.55 * b, -0.3 * c]) if not early_branching else hilum_artery - axes[:, 2] * 3.0)
    ant = add("anterior_division", "division", main,
              [division, (division + ant_end) / 2 + rng.normal(0, 1, 3), ant_end])
    # with a single posterior segment the posterior division *is* its segmental artery
    n_posterior = sum(1 for k in segments if k.startswith("posterior"))
    post = (add("posterior_division", "division", main,
                [division, (division + post_end) / 2 + rng.normal(0, 1, 3), post_end])
            if n_posterior > 1 else None)

    acc = None
    if accessory and accessory_pole is not None:
        pole_sign = 1.0 if accessory_pole == "apical" else -1.0
        entry = world([pole_sign * 0.72 * a, -0.55 * b, 0.0])
        outside = world([pole_sign * 0.75 * a, -1.3 * b, 0.1 * c])
        acc_root = np.asarray(accessory_ostium_mm, float)
        acc_ctrl = [acc_root, (acc_root + outside) / 2 + rng.normal(0, 2, 3),
                    outside, entry]
        acc = add(f"accessory_{accessory_pole}_artery", "accessory", None, acc_ctrl)

    sinus_world = world(sinus_c)
    vein_targets = [world(t) for t in ([0.45 * a, -0.3 * b, 0.2 * c], [-0.45 * a, -0.3 * b, 0.2 * c],
                                       [0.0, -0.1 * b, 0.3 * c])]
    small_veins: list[tuple[np.ndarray, float]] = []

    def lobar_for(parent: int, point: np.ndarray, i: int) -> None:
        """One pyramid: lobar artery, 2–4 interlobar arteries along it, arcuate arteries
        over its base, and an interlobar vein between two of the arteries."""
        apex, base, r_base, _, _ = pyramids[i]
        axis = _unit(base - apex)
        p1, p2 = _perpendicular_frame(axis)
        theta0 = rng.uniform(0, 2 * np.pi)
        near_apex = apex - axis * 2.0 + (p1 * np.cos(theta0) + p2 * np.sin(theta0)) * 3.0
        lobar = add(f"lobar_{i}", "lobar", parent, [point, (point + near_apex) / 2 + rng.normal(0, 1, 3), near_apex])
        n_il = int(rng.integers(3, 5))
        r_apex = 2.0
        for k in range(n_il):
            th = theta0 + 2 * np.pi * k / n_il + rng.uniform(-0.3, 0.3)
            radial = p1 * np.cos(th) + p2 * np.sin(th)
            q1 = apex + radial * (r_apex + 1.5)
            q2 = (apex + base) / 2 + radial * ((r_apex + r_base) / 2 + 1.2)
            q3 = base + radial * (r_base + 1.0) + axis * 0.5
            il = add(f"interlobar_{i}_{k}", "interlobar", lobar, [near_apex, q1, q2, q3])
            for m in range(int(rng.integers(2, 4))):
                turn = (1 if m % 2 == 0 else -1) * rng.uniform(0.5, 1.0)
                arc = []
                for f in np.linspace(0.0, 1.0, 5):
                    ang = th + turn * f
                    rad = p1 * np.cos(ang) + p2 * np.sin(ang)
                    arc.append(base + rad * (r_base + 1.0) + axis * (0.5 + 1.5 * f))
                add(f"arcuate_{i}_{k}_{m}", "arcuate", il, arc)
        # the accompanying interlobar vein (enhanced already in the corticomedullary phase)
        th = theta0 + np.pi / n_il
        radial = p1 * np.cos(th) + p2 * np.sin(th)
        target = min(vein_targets, key=lambda t: float(np.linalg.norm(t - apex)))
        ctrl = np.stack([base + radial * (r_base + 1.2) + axis * 0.3,
                         (apex + base) / 2 + radial * ((r_apex + r_base) / 2 + 1.6),
                         apex + radial * (r_apex + 2.0) - axis * 2.0, target])
        small_veins.append((smooth_path(ctrl, 1.2), float(rng.uniform(0.7, 1.1))))

    def grow(parent: int, point: np.ndarray, group: list[int], name: str) -> None:
        """Bifurcate towards the pyramids in ``group`` (split along their main spread)."""
        if len(group) == 1:
            lobar_for(parent, point, group[0])
            return
        apices = np.stack([pyramids[i][0] for i in group])
        centred = apices - apices.mean(axis=0)
        spread = np.linalg.svd(centred, full_matrices=False)[2][0]
        ordered = [group[j] for j in np.argsort(centred @ spread, kind="stable")]
        half = len(ordered) // 2
        for part, members in enumerate((ordered[:half], ordered[half:])):
            if len(members) == 1:
                lobar_for(parent, point, members[0])
                continue
            target = np.stack([pyramids[i][0] for i in members]).mean(axis=0)
            junction = point + 0.5 * (target - point)
            junction = junction + 0.3 * (sinus_world - junction)
            child = add(f"{name}{part}", "subsegmental", parent,
                        [point, (point + junction) / 2 + rng.normal(0, 1.0, 3), junction])
            grow(child, junction, members, f"{name}{part}")

    for seg_name, members in segments.items():
        apexes = np.stack([pyramids[i][0] for i in members])
        hub = centre + (apexes.mean(axis=0) - centre) * 0.55
        hub = hub + 0.4 * (sinus_world - hub)
        if seg_name == accessory_pole and acc is not None:
            parent = acc
            start = branches[acc].control_mm[-1]
        elif seg_name.startswith("posterior") and post is None:
            parent, start = main, division
        elif seg_name.startswith("posterior"):
            parent, start = post, post_end
        else:
            parent, start = ant, ant_end
        via_post = [post_end] if parent == main else []
        seg = add(f"{seg_name}_segmental", "segmental", parent,
                  [start, *via_post,
                   (start + hub) / 2 + rng.normal(0, 1.5, 3) if not via_post else (post_end + hub) / 2, hub])
        grow(seg, hub, list(members), f"{seg_name}_")

    _assign_radii(rng, branches, main, acc)
    for br in branches:
        step = 1.2 if br.r_start_mm < 1.5 else 2.0
        ctrl = br.control_mm.copy()
        if br.kind in ("segmental", "subsegmental", "lobar", "interlobar", "main", "accessory"):
            ctrl[1:-1] += rng.normal(0, 0.8, ctrl[1:-1].shape)
        pts = smooth_path(ctrl, step)
        if br.parent is not None and branches[br.parent].points_mm is not None:
            pts[0] = branches[br.parent].points_mm[-1]
        if br.kind not in ("main", "accessory"):
            pts = displace(pts, br.r_start_mm)
            if br.parent is not None:
                pts[0] = branches[br.parent].points_mm[-1]
        br.points_mm = pts

    # -- vein: main trunk to the IVC, three tributaries in the sinus ------------------
    r_vein = rng.uniform(4.0, 6.0)
    vein_ctrl = np.stack([hilum_vein, *(np.asarray(p, float) for p in (vein_via_mm or [])),
                          np.asarray(vein_end_mm, float)])
    vein_path = smooth_path(vein_ctrl, 2.0)

    def squeezed(path: np.ndarray, radius: float) -> np.ndarray:
        """The radius along ``path``, narrowed near each ``vein_narrow_mm`` point."""
        radii = np.full(len(path), radius)
        for point, narrow in vein_narrow_mm:
            distance = np.linalg.norm(path - np.asarray(point, float), axis=1)
            if distance.min() > narrow + 2.0:  # this path does not pass the point
                continue
            closeness = np.exp(-(distance / 20.0) ** 2)
            radii = np.minimum(radii, radius - (radius - min(narrow, radius)) * closeness)
        return radii

    veins: list[Shape] = [Tube(vein_path, squeezed(vein_path, r_vein))]
    for limb in vein_limbs_mm:
        points = [np.asarray(q, float) for q in limb]
        split = vein_path[int(np.argmin(np.linalg.norm(vein_path - points[0], axis=1)))]
        limb_path = smooth_path(np.stack([split, *points]), 2.0)
        veins.append(Tube(limb_path, squeezed(limb_path, 0.7 * r_vein)))
    vein_lines = []
    for target in vein_targets:
        r_t = rng.uniform(2.0, 3.0)
        path = displace(smooth_path(np.stack([hilum_vein, (hilum_vein + target) / 2 + rng.normal(0, 1.5, 3),
                                              target]), 1.0), r_t)
        path[0] = hilum_vein
        veins.append(Tube(path, np.linspace(min(r_t * 1.2, r_vein), r_t * 0.8, len(path))))
        vein_lines.append(path)
    for path, r_small in small_veins:
        path = displace(path, r_small)
        veins.append(Tube(path, np.full(len(path), r_small), thin=True))
        vein_lines.append(path)

    # -- calcified plaques in the main renal artery wall (bright specks, not lumen)
    calcifications: list[Shape] = []
    mpts = branches[main].points_mm
    for _ in range(int(rng.integers(0, 3))):
        k = int(rng.integers(0, max(1, len(mpts) // 3)))
        tangent = _unit(mpts[min(k + 1, len(mpts) - 1)] - mpts[max(k - 1, 0)])
        p1, p2 = _perpendicular_frame(tangent)
        ang = rng.uniform(0, 2 * np.pi)
        spot = mpts[k] + (p1 * np.cos(ang) + p2 * np.sin(ang)) * branches[main].r_start_mm
        rr = rng.uniform(0.6, 1.3)
        calcifications.append(Ellipsoid(tuple(spot), np.eye(3), (rr, rr, rr * 1.5)))

    artery_tubes = [br.tube() for br in branches]
    artery_lines = [br.points_mm for br in branches]
    # drawn last so the rest of the kidney does not depend on them: a gently lobulated
    # capsule (fetal lobulation, ~1 mm) and a lobulated tumour outline
    surface = Perturbed.random(outer, rng.uniform(0.4, 1.0), (25.0, 45.0), rng)
    if tumour_shape is not None:
        tumour_shape = Perturbed.random(tumour_shape, rng.uniform(0.5, 0.04 * tumour_r + 0.6), (12.0, 30.0), rng)
    layers: list[tuple[str, list[Shape], list[np.ndarray]]] = [
        ("kidney_cortex", [Difference(surface, notch)], []),
        ("sinus_fat", [sinus], []),
        ("ureter", [ureter], []),
        ("collecting_system", collecting, []),
        ("kidney_medulla", medulla, []),
        ("cyst", cysts, []),
    ]
    if tumour_shape is not None:
        layers.append(("tumour", [tumour_shape], []))
        # how near the main renal artery and vein come to the tumour (gap between their walls and its
        # surface, 0 where they touch or run into it): the truth of R.E.N.A.L.'s hilar suffix
        gaps = {}
        for name, tube in (("artery", artery_tubes[main]), ("vein", veins[0])):
            points = np.asarray(tube.points_mm, float)
            distance = tumour_shape.sdf(points[:, 0], points[:, 1], points[:, 2]) - np.asarray(tube.radii_mm, float)
            gaps[name] = round(max(float(np.min(distance)), 0.0), 1)
        tumour_params["main_vessel_gap_mm"] = gaps
    layers += [
        ("renal_vein", veins, vein_lines),
        ("renal_artery", artery_tubes, artery_lines),
        ("calcification", calcifications, []),
    ]
    params = {
        "side": side,
        "centre_mm": [round(float(v), 2) for v in centre],
        "length_mm": round(float(length), 1),
        "width_mm": round(float(width), 1),
        "thickness_mm": round(float(thickness), 1),
        "tilt_deg": {"coronal": round(angles[0], 1), "sagittal": round(angles[1], 1), "axial": round(angles[2], 1)},
        "cortex_mm": round(float(cortex_mm), 2),
        "pyramids": n_pyramids,
        "hilum_artery_mm": [round(float(v), 2) for v in hilum_artery],
        "hilum_vein_mm": [round(float(v), 2) for v in hilum_vein],
        "artery_ostium_mm": [round(float(v), 2) for v in np.asarray(ostium_mm, float)],
        "accessory_ostium_mm": ([round(float(v), 2) for v in np.asarray(accessory_ostium_mm, float)]
                                if acc is not None else None),
        "renal_vein_radius_mm": round(float(r_vein), 2),
        "variants": {"early_branching": bool(early_branching), "accessory_artery": acc is not None,
                     "accessory_pole": accessory_pole if acc is not None else None},
        "segments": sorted(segments),
        "tumour": tumour_params,
        "calcifications": len(calcifications),
        "cysts": [{"centre_mm": [round(float(v), 2) for v in sh.centre_mm], "radius_mm": round(float(sh.semi_mm[0]), 1)}
                  for sh in cysts],
        "tree": [br.to_dict() for br in branches],
    }
    segment_of = {i: name for name, members in segments.items() for i in members}
    lobes = [{"apex_mm": apex, "base_mm": base, "radius_mm": r_base, "segmental": f"{segment_of[i]}_segmental",
              "root": branches[acc].name if segment_of[i] == accessory_pole and acc is not None else branches[main].name}
             for i, (apex, base, r_base, _, _) in enumerate(pyramids)]
    return Kidney(side, centre, axes, (a, b, c), outer, layers, branches, hilum_artery, hilum_vein, params, lobes)


def _assign_radii(rng: np.random.Generator, branches: list[Branch], main: int, accessory: int | None) -> None:
    """Flows bottom-up (random leaf demand), radii top-down by Murray's law."""

    def flow(i: int) -> float:
        br = branches[i]
        if not br.children:
            br.flow = float(rng.uniform(0.7, 1.3))
        else:
            br.flow = float(sum(flow(c) for c in br.children))
        return br.flow

    roots = [main] + ([accessory] if accessory is not None else [])
    for r in roots:
        flow(r)
    # taper along a branch: the big trunks lose flow to small side branches that are not
    # drawn (adrenal, capsular, ureteric, perforating), the terminal ones hardly
    taper = {"main": (0.88, 0.94), "accessory": (0.9, 0.96), "division": (0.88, 0.94),
             "segmental": (0.88, 0.94), "subsegmental": (0.9, 0.96)}

    def radii(i: int, r_start: float) -> None:
        br = branches[i]
        br.r_start_mm = r_start
        br.r_end_mm = r_start * float(rng.uniform(*taper.get(br.kind, (0.93, 0.98))))
        total = sum(branches[c].flow for c in br.children)
        for c in br.children:
            radii(c, br.r_end_mm * (branches[c].flow / total) ** (1.0 / 3.0))

    # radii are linear in the root's: lay the tree out for a unit root, then scale it so
    # the terminal (arcuate) arteries get a radius drawn from 0.42–0.52 mm, within the
    # main renal artery's 2.5–3.5 mm (a kidney with more lobes gets a thicker artery)
    radii(main, 1.0)
    if accessory is not None:
        radii(accessory, (branches[accessory].flow / branches[main].flow) ** (1.0 / 3.0))
    leaves = [br.r_start_mm for br in branches if not br.children]
    scale = float(np.clip(rng.uniform(0.42, 0.52) / np.median(leaves), 2.5, 3.5))
    for br in branches:
        br.r_start_mm *= scale
        br.r_end_mm *= scale
