"""A deterministic procedural two-lap scene: a camera drives twice around a closed street loop.

The world is a 2-D grid of 1 m cells (Wolfenstein-style): building blocks line a ring-shaped street. Every
facade (a run of wall cells) gets its own procedural texture (base colour, window grid, stripes, posters), so
different places look different while a revisit of the same place looks alike. Frames are rendered with a
vectorised per-column ray caster (numpy only, no downloads). Lap 2 drives with a lateral offset, slightly
different heading, changed lighting and sensor noise, so it is not pixel-identical to lap 1.

Everything is a pure function of :class:`SceneConfig` (seeded), so the demo bag is reproducible bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SceneConfig:
    seed: int = 7
    width: int = 320
    height: int = 240
    fov_deg: float = 90.0
    frames_per_lap: int = 120
    laps: int = 2
    rate_hz: float = 5.0
    start_stamp_ns: int = 1_700_000_000 * NS_PER_S
    # street loop: the route is a rounded rectangle through a grid world
    grid_size: tuple[int, int] = (56, 40)  # cells in x, y (1 m each)
    route_margin: int = 8  # route distance (cells) from the world border
    street_half_width: float = 3.0  # metres from the route centre line to the facades
    corner_radius: float = 3.0
    wall_height: float = 3.0  # metres; the camera is at half height
    # lap-to-lap changes (lap index >= 1)
    lateral_offset_m: float = 0.5
    heading_jitter_deg: float = 2.0
    brightness: float = 0.95
    noise_sigma: float = 4.0
    phase_offset_m: float = 0.37  # lap 2 frames fall between lap 1 frames along the route


# ------------------------------------------------------------------------------------------- world


def _route_polyline(config: SceneConfig, samples_per_m: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Densely sampled centre line (N, 2) of the rounded-rectangle route and its cumulative arc length."""
    nx, ny = config.grid_size
    m, r = config.route_margin, config.corner_radius
    x0, y0, x1, y1 = m + 0.5, m + 0.5, nx - m - 0.5, ny - m - 0.5
    points: list[tuple[float, float]] = []

    def line(a, b):
        length = math.dist(a, b)
        for t in np.linspace(0, 1, max(2, int(length * samples_per_m)), endpoint=False):
            points.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))

    def arc(cx, cy, start):
        for t in np.linspace(0, math.pi / 2, max(2, int(r * math.pi / 2 * samples_per_m)), endpoint=False):
            points.append((cx + r * math.cos(start + t), cy + r * math.sin(start + t)))

    # counter-clockwise, starting at the middle of the bottom edge
    line(((x0 + x1) / 2, y0), (x1 - r, y0))
    arc(x1 - r, y0 + r, -math.pi / 2)
    line((x1, y0 + r), (x1, y1 - r))
    arc(x1 - r, y1 - r, 0.0)
    line((x1 - r, y1), (x0 + r, y1))
    arc(x0 + r, y1 - r, math.pi / 2)
    line((x0, y1 - r), (x0, y0 + r))
    arc(x0 + r, y0 + r, math.pi)
    line((x0 + r, y0), ((x0 + x1) / 2, y0))
    polyline = np.array(points + [points[0]], dtype=np.float64)
    arc_length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))])
    return polyline, arc_length


@dataclass
class World:
    config: SceneConfig
    walls: np.ndarray  # (nx, ny) bool
    facade: np.ndarray  # (nx, ny) int: facade id of each wall cell
    facade_params: np.ndarray  # (n_facades, K) float: texture parameters
    route: np.ndarray
    route_s: np.ndarray

    @property
    def route_length(self) -> float:
        return float(self.route_s[-1])

    def route_pose(self, s: float) -> tuple[np.ndarray, float]:
        """Centre-line point and heading (yaw, rad) at arc length ``s`` (wrapped)."""
        s = s % self.route_length
        x = np.interp(s, self.route_s, self.route[:, 0])
        y = np.interp(s, self.route_s, self.route[:, 1])
        ahead = (s + 0.5) % self.route_length
        xa = np.interp(ahead, self.route_s, self.route[:, 0])
        ya = np.interp(ahead, self.route_s, self.route[:, 1])
        return np.array([x, y]), math.atan2(ya - y, xa - x)


def build_world(config: SceneConfig) -> World:
    """Grid world: everything farther than ``street_half_width`` from the route is building."""
    rng = np.random.default_rng(config.seed)
    route, route_s = _route_polyline(config)
    nx, ny = config.grid_size
    cx, cy = np.meshgrid(np.arange(nx) + 0.5, np.arange(ny) + 0.5, indexing="ij")
    centres = np.stack([cx.ravel(), cy.ravel()], axis=1)
    # distance of every cell centre to the dense route polyline
    distance = np.full(len(centres), np.inf)
    for start in range(0, len(route), 64):
        chunk = route[start : start + 64]
        distance = np.minimum(distance, np.linalg.norm(centres[:, None] - chunk[None], axis=2).min(axis=1))
    walls = (distance > config.street_half_width).reshape(nx, ny)
    # a few pillars / kiosks on the street edge (never on the route itself) for extra landmarks
    edge = (distance > config.street_half_width - 1.0).reshape(nx, ny) & ~walls
    edge_cells = np.argwhere(edge)
    for cell in edge_cells[rng.choice(len(edge_cells), size=len(edge_cells) // 12, replace=False)]:
        walls[tuple(cell)] = True
    # facades: wall cells grouped in 3 x 3 m blocks, each block with its own look
    facade = np.full((nx, ny), -1, dtype=np.int64)
    # facade id from coarse 3x3 m cell blocks
    coarse = (np.arange(nx)[:, None] // 3) * 1000 + (np.arange(ny)[None, :] // 3)
    _, facade_ids = np.unique(coarse, return_inverse=True)
    facade_ids = facade_ids.reshape(nx, ny)
    facade[walls] = facade_ids[walls]
    n_facades = int(facade_ids.max()) + 1
    params = np.empty((n_facades, 12))
    params[:, 0:3] = rng.uniform(0.15, 0.95, size=(n_facades, 3))  # base colour
    params[:, 3:6] = rng.uniform(0.05, 0.95, size=(n_facades, 3))  # accent colour
    params[:, 6] = rng.integers(0, 4, size=n_facades)  # pattern kind
    params[:, 7] = rng.integers(1, 5, size=n_facades)  # windows / stripes per metre-ish
    params[:, 8] = rng.integers(1, 4, size=n_facades)  # window rows
    params[:, 9] = rng.uniform(0, 1, size=n_facades)  # phase
    params[:, 10] = rng.uniform(0.2, 0.8, size=n_facades)  # poster height / duty
    params[:, 11] = rng.uniform(0, 1, size=n_facades)  # poster presence
    return World(config, walls, facade, params, route, route_s)


# ---------------------------------------------------------------------------------------- rendering


def _cast_rays(world: World, origin: np.ndarray, angles: np.ndarray, max_steps: int = 160):
    """DDA ray casting; returns perpendicular distance, hit cell (ix, iy), side (0: x wall, 1: y wall), u."""
    dx, dy = np.cos(angles), np.sin(angles)
    dx = np.where(np.abs(dx) < 1e-9, 1e-9, dx)
    dy = np.where(np.abs(dy) < 1e-9, 1e-9, dy)
    map_x = np.full(angles.shape, int(origin[0]))
    map_y = np.full(angles.shape, int(origin[1]))
    delta_x, delta_y = np.abs(1 / dx), np.abs(1 / dy)
    step_x = np.where(dx < 0, -1, 1)
    step_y = np.where(dy < 0, -1, 1)
    side_x = np.where(dx < 0, origin[0] - map_x, map_x + 1.0 - origin[0]) * delta_x
    side_y = np.where(dy < 0, origin[1] - map_y, map_y + 1.0 - origin[1]) * delta_y
    hit = np.zeros(angles.shape, bool)
    side = np.zeros(angles.shape, np.int64)
    nx, ny = world.walls.shape
    for _ in range(max_steps):
        active = ~hit
        if not active.any():
            break
        use_x = active & (side_x < side_y)
        use_y = active & ~use_x
        map_x = np.where(use_x, map_x + step_x, map_x)
        side_x = np.where(use_x, side_x + delta_x, side_x)
        map_y = np.where(use_y, map_y + step_y, map_y)
        side_y = np.where(use_y, side_y + delta_y, side_y)
        side = np.where(use_x, 0, np.where(use_y, 1, side))
        inside = (map_x >= 0) & (map_x < nx) & (map_y >= 0) & (map_y < ny)
        wall = ~inside | world.walls[np.clip(map_x, 0, nx - 1), np.clip(map_y, 0, ny - 1)]
        hit |= active & wall
    distance = np.where(side == 0, side_x - delta_x, side_y - delta_y)
    distance = np.maximum(distance, 1e-3)
    hit_x = origin[0] + distance * dx
    hit_y = origin[1] + distance * dy
    u = np.where(side == 0, hit_y, hit_x) % 1.0
    return distance, np.clip(map_x, 0, nx - 1), np.clip(map_y, 0, ny - 1), side, u


def render(world: World, position: np.ndarray, yaw: float, *, brightness: float = 1.0) -> np.ndarray:
    """Render one (H, W, 3) uint8 frame from ``position`` (x, y) looking along ``yaw``."""
    return _render(world, position, yaw, brightness)[0]


def render_with_depth(
    world: World, position: np.ndarray, yaw: float, *, brightness: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render` (the identical RGB) plus an aligned (H, W) float32 depth image in metres.

    Depth is the z-depth along the optical axis (what a depth camera's 32FC1 image holds) of wall pixels;
    sky and ground pixels have no geometry in this scene and get 0 (invalid). Use with
    :func:`scene_intrinsics`; the camera sits at ``wall_height / 2`` above the ground.
    """
    rgb, perpendicular, on_wall = _render(world, position, yaw, brightness)
    depth = np.where(on_wall, perpendicular[None, :], 0.0).astype(np.float32)
    return rgb, depth


def scene_intrinsics(config: SceneConfig):
    """Pinhole intrinsics of the renderer (a :class:`tscm_ros.features.CameraIntrinsics`).

    Columns: :func:`render` places column j on the image plane at ``tan(fov/2) * (2 j / (W - 1) - 1)``, so
    ``fx = ((W - 1) / 2) / tan(fov/2)``, ``cx = (W - 1) / 2``. Rows use ``focal = (W / 2) / tan(fov/2)``
    about the centre row, so ``fy = (W / 2) / tan(fov/2)``, ``cy = (H - 1) / 2`` (fx and fy differ by one
    part in W). Optical frame: x right, y down, z along the heading.
    """
    from tscm_ros.features import CameraIntrinsics

    tan_half = math.tan(math.radians(config.fov_deg) / 2)
    return CameraIntrinsics(
        fx=((config.width - 1) / 2) / tan_half, fy=(config.width / 2) / tan_half,
        cx=(config.width - 1) / 2, cy=(config.height - 1) / 2, width=config.width, height=config.height,
    )  # fmt: skip


def _render(
    world: World, position: np.ndarray, yaw: float, brightness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB frame, per-column z-depth (W,) of the wall hit and the (H, W) on-wall mask."""
    config = world.config
    height, width = config.height, config.width
    half_fov = math.radians(config.fov_deg) / 2
    # pinhole columns: evenly spaced on the image plane, not in angle
    plane = np.tan(half_fov) * np.linspace(-1, 1, width)
    angles = yaw - np.arctan(plane)  # image x to the right = clockwise from the heading
    distance, cell_x, cell_y, side, u = _cast_rays(world, position, angles)
    perpendicular = distance * np.cos(angles - yaw)
    focal = (width / 2) / np.tan(half_fov)
    rows = (np.arange(height) - (height - 1) / 2)[:, None]  # (H, 1), 0 at the horizon
    # height above ground (m) seen at each pixel if it lies on the wall of the column
    z = config.wall_height / 2 - rows * perpendicular[None, :] / focal  # (H, W)
    on_wall = (z >= 0) & (z <= config.wall_height)
    v = z / config.wall_height  # 0 bottom .. 1 top

    facade_id = world.facade[cell_x, cell_y]
    params = world.facade_params[np.maximum(facade_id, 0)]  # (W, 12)
    # u along the facade: continuous over neighbouring cells so patterns span the whole block
    along = np.where(side == 0, cell_y, cell_x) + u
    base, accent = params[:, 0:3], params[:, 3:6]
    kind = params[:, 6].astype(int)
    frequency, rows_count, phase = params[:, 7], params[:, 8], params[:, 9]
    duty, poster = params[:, 10], params[:, 11]

    a = along[None, :]
    window_u = ((a * frequency[None] / 2 + phase[None]) % 1.0) < 0.55
    window_v = ((v * (rows_count[None] + 1)) % 1.0 > 0.35) & (v > 0.25) & (v < 0.92)
    stripes_v = ((v * (2 + 2 * frequency[None]) + phase[None]) % 1.0) < duty[None]
    stripes_u = ((a * frequency[None] + phase[None]) % 1.0) < duty[None]
    checker = ((np.floor(a * frequency[None]) + np.floor(v * (rows_count[None] + 2))) % 2) == 0
    pattern = np.select(
        [kind[None] == 0, kind[None] == 1, kind[None] == 2, kind[None] == 3],
        [window_u & window_v, stripes_v, stripes_u & (v < 0.8), checker],
    )
    # posters: a big accent-coloured rectangle on some facades
    poster_on = (poster[None] > 0.55) & (np.abs(((a + phase[None] * 3) % 3.0) - 1.5) < 0.45) & (v > 0.2)
    poster_on &= v < 0.2 + 0.6 * duty[None]
    wall_rgb = np.where(pattern[..., None], accent[None] * 0.6 + base[None] * 0.4, base[None])
    wall_rgb = np.where(poster_on[..., None], 1.0 - accent[None] * 0.8, wall_rgb)
    shade = np.where(side == 0, 1.0, 0.78) / (1.0 + 0.02 * perpendicular)  # side shading + distance fog
    wall_rgb = wall_rgb * shade[None, :, None]
    wall_rgb = np.where((facade_id < 0)[None, :, None], 0.3, wall_rgb)

    sky = np.linspace(0.85, 0.55, height)[:, None, None] * np.array([0.55, 0.7, 1.0])
    ground = np.linspace(0.25, 0.5, height)[:, None, None] * np.array([0.9, 0.85, 0.8])
    background = np.where((rows < 0)[..., None], sky, ground)
    image = np.where(on_wall[..., None], wall_rgb, np.broadcast_to(background, (height, width, 3)))
    return np.clip(image * brightness * 255.0, 0, 255).astype(np.uint8), perpendicular, on_wall


# ----------------------------------------------------------------------------------------- sequence


def yaw_to_quaternion(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


@dataclass(frozen=True)
class TrajectorySample:
    index: int
    lap: int
    stamp_ns: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]  # quaternion xyzw (yaw about +z)
    yaw: float
    route_s: float


@dataclass(frozen=True)
class SceneFrame(TrajectorySample):
    """A trajectory sample with its rendered image."""

    rgb: np.ndarray = field(repr=False)


def plan_trajectory(config: SceneConfig, world: World | None = None) -> list[TrajectorySample]:
    """Camera poses of all laps in time order (lap 2+: phase shift, lateral offset, heading jitter)."""
    world = world or build_world(config)
    rng = np.random.default_rng(config.seed + 1)
    spacing = world.route_length / config.frames_per_lap
    period_ns = round(NS_PER_S / config.rate_hz)
    samples = []
    for lap in range(config.laps):
        changed = lap >= 1
        for step in range(config.frames_per_lap):
            index = lap * config.frames_per_lap + step
            s = step * spacing + (config.phase_offset_m if changed else 0.0)
            centre, heading = world.route_pose(s)
            if changed:
                normal = np.array([-math.sin(heading), math.cos(heading)])  # to the left of the heading
                centre = centre + config.lateral_offset_m * (1 if lap % 2 else -1) * normal
                heading += math.radians(rng.uniform(-1, 1) * config.heading_jitter_deg)
            samples.append(
                TrajectorySample(
                    index=index,
                    lap=lap,
                    stamp_ns=config.start_stamp_ns + index * period_ns,
                    position=(float(centre[0]), float(centre[1]), 0.0),
                    orientation=yaw_to_quaternion(heading),
                    yaw=float(heading),
                    route_s=float(s % world.route_length),
                )
            )
    return samples


def generate_frames(config: SceneConfig = SceneConfig(), world: World | None = None) -> Iterator[SceneFrame]:
    """Yield the rendered frames of all laps in time order (deterministic for a given config)."""
    world = world or build_world(config)
    noise_rng = np.random.default_rng(config.seed + 2)
    for sample in plan_trajectory(config, world):
        changed = sample.lap >= 1
        rgb = render(
            world, np.array(sample.position[:2]), sample.yaw, brightness=config.brightness if changed else 1.0
        )
        if changed and config.noise_sigma > 0:
            noise = noise_rng.normal(0.0, config.noise_sigma, size=rgb.shape)
            rgb = np.clip(rgb + noise, 0, 255).astype(np.uint8)
        yield SceneFrame(**{f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)}, rgb=rgb)
