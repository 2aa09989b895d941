"""Report-driven frontal chest radiograph phantoms (docs/demo_data.md, the table in shared demo-data spec).

A phantom is built in "body units" on a pixel grid: X across the chest (0 = midline, +-1 about the outer rib cage;
positive X is the IMAGE's right = the PATIENT's left), Y down the lungs (0 about the apices, 1 about the diaphragm).
Per sample the grid gets its own scale, position and small rotation, and the anatomy its own sizes; densities are
summed (soft tissue, lung air, heart, mediastinum, spine, ribs, clavicles, vessel markings, the findings) and mapped
to display brightness with a random exposure and contrast curve, blur and noise.

Determinism across machines: every per-pixel step uses only + - * / sqrt, comparisons and clipping (IEEE-exact
everywhere; no exp/sin/pow whose last bit may differ between CPUs or libraries), noise is built from uniform draws,
and rotations use the rational parametrisation cos = (1-t^2)/(1+t^2), sin = 2t/(1+t^2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bundle.data.demo_classes import CLASS_INDEX, Finding

F32 = np.float32
NORMAL_CTR = (0.38, 0.47)
CTR_BY_SEVERITY = {"mild": 0.55, "moderate": 0.60, "severe": 0.65, None: 0.58}
# label-map painting order: later classes overwrite earlier ones where they overlap
MASK_ORDER = ("pleural_effusion", "atelectasis", "lung_opacity", "pneumothorax", "nodule_mass", "calcified_granuloma")


@dataclass
class Phantom:
    image: np.ndarray  # uint8 [S, S], display convention (bright = dense)
    label_map: np.ndarray  # uint8 [S, S], class ids of CLASS_NAMES (0 = background)
    boxes: list[list[int]]  # [x1, y1, x2, y2], pixel-edge coordinates: x = column, x2/y2 exclusive
    box_labels: list[int]  # class ids of CLASS_NAMES
    drawn: list[str]  # classes actually drawn (sorted by class id)
    details: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- arithmetic helpers
def smoothstep(e0: float, e1: float, x):
    """0 below e0, 1 above e1 (e1 < e0 reverses), cubic in between."""
    t = np.clip((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def cube_abs(v):
    a = np.abs(v)
    return a * a * a


def bump(d2, s2):
    """A smooth bump 1 / (1 + d2/s2)^2 (rational, no exp)."""
    q = 1.0 / (1.0 + d2 * (1.0 / s2))
    return q * q


def segment_distance(xx, yy, p0, p1):
    """Pixel distance from every grid point to the segment p0-p1 (points as (x, y) pixels)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) * (1.0 / max(length2, 1e-9)), 0.0, 1.0)
    ex, ey = xx - (x0 + t * dx), yy - (y0 + t * dy)
    return np.sqrt(ex * ex + ey * ey)


def polyline_distance(xx, yy, points):
    d = segment_distance(xx, yy, points[0], points[1])
    for a, b in zip(points[1:-1], points[2:]):
        d = np.minimum(d, segment_distance(xx, yy, a, b))
    return d


def quadratic_curve(p0, p1, p2, n=12):
    """Points of the quadratic Bezier p0 -> p2 bent towards p1."""
    out = []
    for i in range(n + 1):
        t = i / n
        a, b, c = (1 - t) * (1 - t), 2 * (1 - t) * t, t * t
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


def value_noise(rng: np.random.Generator, size: int, cells: int):
    """Smooth noise in [0, 1]: a (cells+1)^2 grid of uniforms, smoothstep-bilinear upsampled to size x size."""
    grid = rng.random((cells + 1, cells + 1)).astype(F32)
    pos = (np.arange(size, dtype=F32) + 0.5) * F32(cells / size)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0.astype(F32)
    f = f * f * (3.0 - 2.0 * f)
    rows = grid[i0] * (1.0 - f)[:, None] + grid[i0 + 1] * f[:, None]  # [size, cells+1]
    return rows[:, i0] * (1.0 - f)[None, :] + rows[:, i0 + 1] * f[None, :]  # [size, size]


def binomial_blur(img, passes: int):
    """Separable [1, 2, 1] / 4 blur, `passes` times, edges replicated."""
    for _ in range(passes):
        p = np.pad(img, 1, mode="edge")
        img = (p[:-2, 1:-1] + 2.0 * p[1:-1, 1:-1] + p[2:, 1:-1]) * 0.25
        p = np.pad(img, 1, mode="edge")
        img = (p[1:-1, :-2] + 2.0 * p[1:-1, 1:-1] + p[1:-1, 2:]) * 0.25
    return img


def mask_box(mask) -> list[int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


# ----------------------------------------------------------------------------------------------- the frame
class Frame:
    """Pixel grid <-> body units, with per-sample scale, position and rotation."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.hw = size * rng.uniform(0.30, 0.36)  # half thorax width in pixels
        self.h = size * rng.uniform(0.55, 0.63)  # apex-to-diaphragm height in pixels
        self.cx = size * (0.5 + rng.uniform(-0.035, 0.035))
        self.cy = size * rng.uniform(0.10, 0.16) + 0.5 * self.h
        t = rng.uniform(-0.045, 0.045)  # tan(angle / 2): up to about 5 degrees
        self.cos, self.sin = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)
        yy, xx = np.mgrid[0:size, 0:size].astype(F32)
        self.xx, self.yy = xx + 0.5, yy + 0.5
        dx, dy = self.xx - F32(self.cx), self.yy - F32(self.cy)
        self.X = (dx * F32(self.cos) + dy * F32(self.sin)) * F32(1.0 / self.hw)
        self.Y = (dy * F32(self.cos) - dx * F32(self.sin)) * F32(1.0 / self.h) + F32(0.5)

    def to_pixel(self, X: float, Y: float) -> tuple[float, float]:
        a, b = X * self.hw, (Y - 0.5) * self.h
        return self.cx + a * self.cos - b * self.sin, self.cy + a * self.sin + b * self.cos

    def pixel_index(self, X: float, Y: float) -> tuple[int, int] | None:
        x, y = self.to_pixel(X, Y)
        r, c = int(y), int(x)
        return (r, c) if 0 <= r < self.size and 0 <= c < self.size else None


# ----------------------------------------------------------------------------------------------- the renderer
class PhantomRenderer:
    """Draws one phantom; `render` is the entry point (one instance per sample)."""

    def __init__(self, findings: list[Finding], size: int, rng: np.random.Generator):
        self.findings = findings
        self.size = size
        # three independent streams: a finding's draws never shift the anatomy or the noise, so the same seed
        # gives the same patient with and without a finding (tests compare such pairs pixel by pixel)
        self.rng, self.frng, self.nrng = rng.spawn(3)
        self.f = Frame(size, self.rng)
        self.by_class: dict[str, list[Finding]] = {}
        for finding in findings:
            self.by_class.setdefault(finding.cls, []).append(finding)
        self.drawn: set[str] = set()
        self.masks: dict[str, np.ndarray] = {}
        self.boxes: list[tuple[list[int], int]] = []
        self.details: dict = {}

    # -- helpers
    def u(self, lo: float, hi: float) -> float:
        """An anatomy draw."""
        return float(self.rng.uniform(lo, hi))

    def fu(self, lo: float, hi: float) -> float:
        """A finding draw."""
        return float(self.frng.uniform(lo, hi))

    def nu(self, lo: float, hi: float) -> float:
        """An exposure / noise draw."""
        return float(self.nrng.uniform(lo, hi))

    def sides(self, finding: Finding) -> list[int]:
        """Image-side signs (-1 = image left = patient right) for a finding's side qualifier (random if none)."""
        if finding.zone == "retrocardiac":
            return [1]  # behind the heart: the patient's left lower lobe
        if finding.side == "bilateral":
            return [-1, 1]
        if finding.side == "right":
            return [-1]
        if finding.side == "left":
            return [1]
        return [int(self.frng.choice([-1, 1]))]

    def add_mask(self, cls: str, mask) -> None:
        self.masks[cls] = self.masks[cls] | mask if cls in self.masks else mask

    # -- anatomy
    def anatomy(self) -> None:
        f, u = self.f, self.u
        X, Y = f.X, f.Y
        emph = "emphysema" in self.by_class
        hypo = "hypoinflation" in self.by_class
        self.base = 1.0 + u(-0.03, 0.03) + (0.08 if emph else 0.0) - (0.14 if hypo else 0.0)
        dome_height = u(0.02, 0.04) if emph else u(0.08, 0.13)
        self.lung_air = u(0.70, 0.78) if emph else u(0.58, 0.66)
        self.shape, self.lung, self.dome, self.lcx = {}, {}, {}, {}
        for s in (-1, 1):
            lcx = 0.5 + u(-0.03, 0.03)
            ax = (0.44 + u(-0.03, 0.03)) * (1.03 if emph else 1.0)
            ay = (0.58 + u(-0.03, 0.03)) * (1.06 if emph else 0.9 if hypo else 1.0)
            lcy = 0.55 + (0.03 if emph else -0.05 if hypo else 0.0)
            q = cube_abs((X - s * lcx) * (1.0 / ax)) + cube_abs((Y - lcy) * (1.0 / ay))
            shape = smoothstep(-0.04, 0.04, 1.0 - q)
            base = self.base - (0.035 if s == -1 else 0.0)  # the right hemidiaphragm sits higher
            peak_x = s * (lcx - 0.05)
            k = (dome_height + 0.07) / (0.45 * 0.45)
            dome = base - dome_height + k * (X - peak_x) * (X - peak_x)
            self.shape[s], self.dome[s], self.lcx[s] = shape, dome, (lcx, ax, lcy, ay, base)
            self.lung[s] = shape * smoothstep(-0.012, 0.012, dome - Y)
        # heart: the cardiothoracic ratio is its width over the outer rib-cage width (about 2 * (lcx + ax))
        cardio = self.by_class.get("cardiomegaly")
        if cardio:
            ctr = CTR_BY_SEVERITY.get(cardio[0].severity, 0.58) + u(-0.015, 0.015)
        else:
            ctr = u(*NORMAL_CTR)
        thorax_half = 0.5 * sum(self.lcx[s][0] + self.lcx[s][1] for s in (-1, 1))
        self.hx, self.hy = 0.12 + u(-0.03, 0.03), self.base - 0.1 + u(-0.02, 0.02)
        self.ha, self.hb = ctr * thorax_half, 0.25 + u(-0.02, 0.03)
        dxh, dyh = (X - self.hx) * (1.0 / self.ha), (Y - self.hy) * (1.0 / self.hb)
        self.heart = smoothstep(-0.06, 0.06, 1.0 - dxh * dxh - dyh * dyh)
        self.details["ctr"] = round(ctr, 3)
        # spine centre line (scoliosis bends it) and the mediastinum that follows it a little
        self.spine_center = self.scoliosis_curve()
        shift = 0.3 * self.spine_center
        mw = u(0.13, 0.17) + 0.06 * np.clip(Y, 0.0, 1.0)
        self.med = smoothstep(-0.02, 0.02, mw - np.abs(X - shift)) * smoothstep(self.hy, self.hy - 0.2, Y)
        self.trachea = smoothstep(-0.01, 0.01, 0.032 - np.abs(X - shift)) * smoothstep(0.32, 0.22, Y)
        # body outline: chest wall, shoulders, neck
        bw = 1.14 + u(-0.06, 0.08)
        above = np.maximum(-0.1 - Y, 0.0)
        width = np.where(Y > 0.0, bw + 0.08 * Y, np.maximum(bw + 0.14 - 12.0 * above * above, 0.34 + u(-0.03, 0.03)))
        self.body = smoothstep(-0.03, 0.03, width - np.abs(X))
        self.tissue = u(0.92, 1.08)

    def scoliosis_curve(self):
        Y = self.f.Y
        if "scoliosis" not in self.by_class:
            return np.zeros_like(Y)
        self.drawn.add("scoliosis")
        amp = self.fu(0.09, 0.16) * float(self.frng.choice([-1, 1]))
        t = np.clip((Y + 0.15) * (1.0 / 1.25), 0.0, 1.0)
        if self.frng.random() < 0.5:
            self.details["scoliosis"] = "C"
            return amp * 4.0 * t * (1.0 - t)
        self.details["scoliosis"] = "S"
        return amp * 10.4 * t * (1.0 - t) * (1.0 - 2.0 * t)

    def bones(self):
        f, u = self.f, self.u
        X, Y = f.X, f.Y
        ax_ = np.abs(X - 0.3 * self.spine_center)
        # spine with brighter vertebral end plates
        spine = smoothstep(-0.02, 0.02, 0.085 - np.abs(X - self.spine_center))
        period = u(0.085, 0.1)
        phase = Y * (1.0 / period) + u(0.0, 1.0)
        frac = phase - np.floor(phase)
        density = 0.30 * spine * (0.7 + 1.2 * frac * (1.0 - frac))
        # ribs: posterior (bright) and anterior (faint) arcs on both sides
        spacing, first = u(0.088, 0.1), u(-0.02, 0.03)
        curl, slope = u(0.10, 0.16), u(0.06, 0.14)
        thick = u(0.026, 0.034)
        lateral = smoothstep(0.97, 0.93, ax_) * smoothstep(0.06, 0.1, ax_) * smoothstep(self.base + 0.2, self.base, Y)
        fracture = self.fracture_site(spacing, first)
        ribs = np.zeros_like(X)
        for k in range(11):
            center = first + k * spacing + slope * ax_ + curl * ax_ * ax_
            if fracture is not None and fracture[0] == k:
                _, s, xf, step = fracture
                side = (X * s) > 0
                beyond = side & (ax_ > xf)
                center = center + np.where(beyond, step, 0.0)
                gap = smoothstep(0.012, 0.024, np.abs(ax_ - xf)) + (~side)
                gap = np.minimum(gap, 1.0)
                band = smoothstep(-0.006, 0.006, thick - np.abs(Y - center)) * gap
                density = density - 0.08 * (1.0 - gap) * smoothstep(0.0, 0.01, 2.5 * thick - np.abs(Y - center)) * side
            else:
                band = smoothstep(-0.006, 0.006, thick - np.abs(Y - center))
            ribs = ribs + band
            anterior = first + 0.25 + k * spacing * 0.9 - 0.22 * ax_
            ribs = ribs + 0.4 * smoothstep(-0.006, 0.006, 0.8 * thick - np.abs(Y - anterior)) * (ax_ > 0.3)
        density = density + self.u(0.09, 0.13) * np.minimum(ribs, 1.6) * lateral
        # clavicles
        cl = np.zeros_like(X)
        for s in (-1, 1):
            y0 = u(-0.09, -0.03)
            p0, p1 = f.to_pixel(s * 0.08, y0), f.to_pixel(s * 0.78, y0 - u(0.06, 0.14))
            cl = np.maximum(
                cl, smoothstep(0.045 * f.hw + 1.0, 0.045 * f.hw - 1.0, segment_distance(f.xx, f.yy, p0, p1))
            )
        density = density + 0.28 * cl
        if fracture is not None:
            k, s, xf, _ = fracture
            y_site = first + k * spacing + slope * xf + curl * xf * xf
            px, py = f.to_pixel(s * xf, y_site)
            self.details["fracture_rib_pixel"] = [round(px, 1), round(py, 1)]
            if any("healed" in fi.term.lower() for fi in self.by_class["fracture"]):  # callus
                density = density + 0.25 * smoothstep(
                    0.04 * f.hw, 0.02 * f.hw, np.sqrt((f.xx - px) ** 2 + (f.yy - py) ** 2)
                )
            self.drawn.add("fracture")
        return density

    def fracture_site(self, spacing, first):
        fr = self.by_class.get("fracture")
        if not fr:
            return None
        s = self.sides(fr[0])[0]
        step = self.fu(0.04, 0.055) * float(self.frng.choice([-1, 1]))
        return int(self.frng.integers(3, 8)), s, self.fu(0.5, 0.78), step

    def markings(self):
        """Vessel-like branching lines (contours of smooth noise), denser towards the hila."""
        f, rng = self.f, self.rng
        n = (
            0.45 * value_noise(rng, self.size, 5)
            + 0.3 * value_noise(rng, self.size, 10)
            + 0.25 * value_noise(rng, self.size, 20)
        )
        lines = smoothstep(0.035, 0.0, np.abs(n - 0.5))
        X, Y = f.X, f.Y
        hilum = np.maximum(bump((np.abs(X) - 0.22) ** 2 + (Y - 0.45) ** 2, 0.12), 0.25)
        return lines * hilum

    # -- findings
    def pick_point(self, s: int, zone: str | None, margin: float = 0.8) -> tuple[float, float]:
        """A point (body units) inside the visible lung of side s in the zone (random where none is named)."""
        zone = zone or str(self.frng.choice(["upper", "middle", "lower"]))
        lcx, ax, lcy, ay, base = self.lcx[s]
        ranges = {
            "upper": (0.06, 0.36),
            "middle": (0.36, 0.6),
            "lower": (0.6, base - 0.06),
            "hilum": (0.38, 0.52),
            "retrocardiac": (self.hy - 0.08, self.hy + 0.08),
        }
        y_lo, y_hi = ranges.get(zone, (0.1, base - 0.06))
        best, best_score = None, -1.0
        for _ in range(40):
            if zone == "hilum":
                X = s * self.fu(0.2, 0.32)
            elif zone == "retrocardiac":
                X = self.hx + self.fu(0.0, 0.5 * self.ha)
            else:
                X = s * self.fu(0.2, 0.9)
            Y = self.fu(y_lo, max(y_hi, y_lo + 0.02))
            idx = self.f.pixel_index(X, Y)
            if idx is None:
                continue
            lung = float(self.lung[s][idx])
            score = lung if zone in ("hilum", "retrocardiac") else lung * (1.0 - float(self.heart[idx]))
            if score >= margin:
                return X, Y
            if score > best_score:
                best, best_score = (X, Y), score
        return best if best is not None else (s * 0.5, 0.5)

    def visible_lung(self, s: int):
        return self.lung[s] * (1.0 - 0.8 * self.heart) * (1.0 - self.med)

    def add_box(self, cls: str, mask) -> None:
        box = mask_box(mask)
        if box is not None:
            self.boxes.append((box, CLASS_INDEX[cls]))

    def effusions(self):
        replaced = np.zeros_like(self.f.X)
        for finding in self.by_class.get("pleural_effusion", []):
            height = {"mild": 0.11, "moderate": 0.2, "severe": 0.32}.get(finding.severity, self.fu(0.11, 0.25))
            for s in self.sides(finding):
                lcx, ax, lcy, ay, base = self.lcx[s]
                X, Y = self.f.X, self.f.Y
                lateral = np.clip((np.abs(X) - 0.3) * (1.0 / 0.6), 0.0, 1.0)
                meniscus = base - height - self.fu(0.08, 0.14) * lateral * lateral
                fluid = smoothstep(-0.012, 0.012, Y - meniscus) * self.shape[s]
                replaced = np.maximum(replaced, fluid)
                mask = (fluid > 0.5) & (Y <= self.dome[s] + 0.04) & (self.heart < 0.5)
                if mask.any():
                    self.add_mask("pleural_effusion", mask)
                    self.drawn.add("pleural_effusion")
        return replaced

    def opacities(self):
        out = np.zeros_like(self.f.X)
        f = self.f
        for finding in self.by_class.get("lung_opacity", []):
            for s in self.sides(finding):
                for _ in range(2 if finding.multiple else 1):
                    X0, Y0 = self.pick_point(s, finding.zone)
                    px, py = f.to_pixel(X0, Y0)
                    radius = self.size * (
                        {"mild": self.fu(0.04, 0.06), "severe": self.fu(0.08, 0.11)}.get(
                            finding.severity, self.fu(0.05, 0.09)
                        )
                    )
                    field_ = np.zeros_like(f.X)
                    for _ in range(int(self.frng.integers(4, 8))):
                        bx, by = px + self.fu(-0.6, 0.6) * radius, py + self.fu(-0.45, 0.45) * radius
                        sig = radius * self.fu(0.45, 0.7)
                        field_ = field_ + bump((f.xx - bx) ** 2 + (f.yy - by) ** 2, sig * sig)
                    texture = value_noise(self.frng, self.size, 24)
                    behind_heart = 0.0 if finding.zone == "retrocardiac" else 0.7
                    opacity = (
                        smoothstep(0.3, 0.85, field_ * (0.65 + 0.7 * texture))
                        * self.lung[s]
                        * (1.0 - behind_heart * self.heart)
                    )
                    mask = opacity > 0.5
                    if int(mask.sum()) >= 4:
                        out = np.maximum(out, opacity)
                        self.add_mask("lung_opacity", mask)
                        self.add_box("lung_opacity", mask)
                        self.drawn.add("lung_opacity")
        return out

    def atelectases(self):
        out = np.zeros_like(self.f.X)
        f = self.f
        for finding in self.by_class.get("atelectasis", []):
            for s in self.sides(finding):
                zone = finding.zone or ("lower" if self.frng.random() < 0.8 else None)
                X0, Y0 = self.pick_point(s, zone)
                px, py = f.to_pixel(X0, Y0)
                half = 0.5 * self.size * self.fu(0.08, 0.14)
                tilt = self.fu(-0.3, 0.3)
                norm = 1.0 / np.sqrt(1.0 + tilt * tilt)
                p0, p1 = (px - half * norm, py - half * tilt * norm), (px + half * norm, py + half * tilt * norm)
                thick = max(self.size * self.fu(0.007, 0.011), 1.2)
                band = smoothstep(thick + 0.8, thick - 0.8, segment_distance(f.xx, f.yy, p0, p1)) * self.lung[s]
                mask = band > 0.5
                if mask.any():
                    out = np.maximum(out, band)
                    self.add_mask("atelectasis", mask)
                    self.drawn.add("atelectasis")
        return out

    def round_lesions(self):
        density = np.zeros_like(self.f.X)
        f = self.f
        for cls in ("nodule_mass", "calcified_granuloma"):
            for finding in self.by_class.get(cls, []):
                calcified = cls == "calcified_granuloma"
                count = int(self.frng.integers(2, 5)) if finding.multiple else 1
                for s in self.sides(finding):
                    for _ in range(count):
                        X0, Y0 = self.pick_point(s, finding.zone, margin=0.9)
                        px, py = f.to_pixel(X0, Y0)
                        if calcified:
                            r, edge, amp = max(self.size * self.fu(0.011, 0.017), 2.0), 0.5, 0.95
                        elif finding.detail == "mass":
                            r, edge, amp = self.size * self.fu(0.05, 0.075), 1.5, 0.45
                        else:
                            r, edge, amp = max(self.size * self.fu(0.022, 0.035), 3.0), 1.0, 0.42
                        dist = np.sqrt((f.xx - px) ** 2 + (f.yy - py) ** 2)
                        disc = smoothstep(r + edge, r - edge, dist)
                        density = density + amp * disc
                        mask = dist <= r
                        if mask.any():
                            self.add_mask(cls, mask)
                            self.add_box(cls, mask)
                            self.drawn.add(cls)
        return density

    def pneumothoraces(self):
        rim = np.zeros_like(self.f.X)
        line = np.zeros_like(self.f.X)
        collapsed = np.zeros_like(self.f.X)
        X, Y = self.f.X, self.f.Y
        for finding in self.by_class.get("pneumothorax", []):
            depth = {"mild": 0.12, "moderate": 0.2, "severe": 0.3}.get(finding.severity, self.fu(0.12, 0.24))
            for s in self.sides(finding):
                lcx, ax, lcy, ay, base = self.lcx[s]
                k = 1.0 - depth
                anchor_x, anchor_y = s * (lcx - 0.6 * ax), lcy + 0.6 * ay
                cx, cy = anchor_x + k * (s * lcx - anchor_x), anchor_y + k * (lcy - anchor_y)
                q = cube_abs((X - cx) * (1.0 / (k * ax))) + cube_abs((Y - cy) * (1.0 / (k * ay)))
                inner = smoothstep(-0.03, 0.03, 1.0 - q)
                p = self.lung[s] * (1.0 - inner) * (1.0 - self.heart)
                rim = np.maximum(rim, p)
                collapsed = np.maximum(collapsed, inner * self.lung[s])
                line = np.maximum(line, smoothstep(0.05, 0.0, np.abs(1.0 - q)) * self.lung[s] * (1.0 - self.heart))
                mask = p > 0.5
                if mask.any():
                    self.add_mask("pneumothorax", mask)
                    self.drawn.add("pneumothorax")
        return rim, line, collapsed

    def edema(self):
        X, Y = self.f.X, self.f.Y
        haze, kerley = np.zeros_like(X), np.zeros_like(X)
        if "edema" not in self.by_class:
            return haze, kerley
        amp = {"mild": 0.6, "moderate": 0.8, "severe": 1.0}.get(self.by_class["edema"][0].severity, 0.8)
        for s in (-1, 1):
            haze = np.maximum(haze, amp * bump((X - s * 0.3) ** 2 + 0.5 * (Y - 0.5) ** 2, 0.1))
            base = self.lcx[s][4]
            for _ in range(int(self.frng.integers(4, 7))):
                yk = base - self.fu(0.06, 0.28)
                x_out = s * self.fu(0.82, 0.9)
                p0, p1 = self.f.to_pixel(x_out, yk), self.f.to_pixel(x_out - s * self.fu(0.07, 0.12), yk)
                kerley = np.maximum(kerley, smoothstep(1.4, 0.4, segment_distance(self.f.xx, self.f.yy, p0, p1)))
        self.drawn.add("edema")
        return haze, kerley

    def devices(self):
        f = self.f
        density = np.zeros_like(f.X)
        kinds = []
        for finding in self.by_class.get("support_devices", []):
            kind = finding.detail or "catheter"
            s = {"right": -1, "left": 1}.get(finding.side or "", 0)
            wire = max(0.0045 * self.size, 0.9)
            if kind == "pacemaker":
                s = s or 1
                gx, gy = f.to_pixel(s * self.fu(0.55, 0.7), self.fu(-0.08, 0.05))
                hx_, hy_ = 0.032 * self.size, 0.022 * self.size
                box = np.minimum(hx_ - np.abs(f.xx - gx), hy_ - np.abs(f.yy - gy))
                density = density + 1.3 * smoothstep(-0.8, 0.8, box)
                pts = quadratic_curve((gx, gy), f.to_pixel(s * 0.1, 0.05), f.to_pixel(self.hx - 0.05, self.hy + 0.05))
                density = density + 0.9 * smoothstep(wire + 0.6, wire - 0.6, polyline_distance(f.xx, f.yy, pts))
            elif kind == "tube":
                x0 = 0.3 * float(
                    self.spine_center[min(max(int(f.to_pixel(0, 0.1)[1]), 0), self.size - 1), self.size // 2]
                )
                for off in (-0.018, 0.018):
                    p0, p1 = f.to_pixel(x0 + off, -0.6), f.to_pixel(x0 + off, self.fu(0.15, 0.25))
                    density = density + 0.7 * smoothstep(wire + 0.5, wire - 0.5, segment_distance(f.xx, f.yy, p0, p1))
            elif kind in ("clips", "valve"):
                if kind == "valve" or finding.side is None:  # sternotomy wires down the midline (or a valve)
                    for i in range(int(self.frng.integers(4, 7))):
                        cx_, cy_ = f.to_pixel(self.fu(-0.02, 0.02), 0.12 + i * self.fu(0.09, 0.11))
                        r = np.sqrt((f.xx - cx_) ** 2 + (f.yy - cy_) ** 2)
                        ring = 0.012 * self.size + 1.0
                        density = density + 1.1 * smoothstep(1.2, 0.4, np.abs(r - ring))
                    if kind == "valve":
                        cx_, cy_ = f.to_pixel(self.hx, self.hy - 0.05)
                        r = np.sqrt((f.xx - cx_) ** 2 + (f.yy - cy_) ** 2)
                        density = density + 1.1 * smoothstep(1.4, 0.5, np.abs(r - 0.025 * self.size))
                else:  # a cluster of surgical clips on the named side
                    cx0, cy0 = f.to_pixel(s * self.fu(0.3, 0.6), self.fu(0.2, 0.7))
                    for _ in range(int(self.frng.integers(3, 6))):
                        cx_, cy_ = cx0 + self.fu(-0.04, 0.04) * self.size, cy0 + self.fu(-0.04, 0.04) * self.size
                        box = np.minimum(
                            0.006 * self.size + 0.6 - np.abs(f.xx - cx_), 0.014 * self.size + 0.6 - np.abs(f.yy - cy_)
                        )
                        density = density + 1.2 * smoothstep(-0.6, 0.6, box)
            else:  # central venous catheter into the SVC
                s = s or int(self.frng.choice([-1, 1]))
                pts = quadratic_curve(
                    f.to_pixel(s * self.fu(0.6, 0.8), -0.16),
                    f.to_pixel(s * 0.15, -0.02),
                    f.to_pixel(self.fu(-0.08, -0.02), self.fu(0.32, 0.45)),
                )
                density = density + 0.8 * smoothstep(wire + 0.6, wire - 0.6, polyline_distance(f.xx, f.yy, pts))
            kinds.append(kind)
        if kinds:
            self.drawn.add("support_devices")
            self.details["devices"] = kinds
        return density

    def hernia(self):
        f = self.f
        if "hiatal_hernia" not in self.by_class:
            return np.zeros_like(f.X)
        severity = self.by_class["hiatal_hernia"][0].severity
        r = self.size * ({"mild": 0.03, "severe": 0.055}.get(severity, self.fu(0.035, 0.05)))
        bx, by = f.to_pixel(self.hx + self.fu(-0.05, 0.05), self.hy + self.fu(0.0, 0.06))
        dist = np.sqrt((f.xx - bx) ** 2 + (f.yy - by) ** 2)
        inside = smoothstep(r + 0.8, r - 0.8, dist)
        level = by + self.fu(-0.1, 0.3) * r
        gas = inside * smoothstep(level + 0.6, level - 0.6, f.yy)
        wall = smoothstep(1.5, 0.5, np.abs(dist - r))
        self.drawn.add("hiatal_hernia")
        return -0.5 * gas + 0.08 * wall

    # -- composition
    def render(self) -> Phantom:
        u, f = self.nu, self.f
        self.anatomy()
        bone_density = self.bones()
        markings = self.markings()
        fluid = self.effusions()
        opacity = self.opacities()
        atelectasis = self.atelectases()
        rim, pleural_line, collapsed = self.pneumothoraces()
        haze, kerley = self.edema()
        if "emphysema" in self.by_class:
            self.drawn.add("emphysema")
            markings = markings * 0.45
        if "hypoinflation" in self.by_class:
            self.drawn.add("hypoinflation")
        if "cardiomegaly" in self.by_class:
            self.drawn.add("cardiomegaly")
        if "edema" in self.by_class:
            markings = markings * 1.8
        lungs = np.minimum(self.lung[-1] + self.lung[1], 1.0)
        markings = markings * (1.0 - rim)
        air = (
            lungs
            * (1.0 - fluid)
            * (1.0 - 0.8 * opacity)
            * (1.0 - 0.55 * haze)
            * (1.0 - 0.85 * self.heart)
            * (1.0 - 0.9 * self.med)
        )
        density = (
            self.tissue * self.body
            - self.lung_air * air
            - 0.16 * rim * lungs
            + 0.08 * collapsed
            + 0.06 * self.heart
            - 0.25 * self.trachea
            + bone_density
            + 0.3 * opacity * self.heart
            + u(0.14, 0.22) * markings * lungs
            + 0.45 * atelectasis * (1.0 - fluid)
            + 0.05 * fluid
            + 0.25 * pleural_line
            + 0.18 * kerley * lungs
            + self.round_lesions()
            + self.devices()
            + self.hernia()
        )
        density = density * (1.0 + u(-0.08, 0.08) * (f.Y - 0.5))  # heel effect
        density = np.maximum(density, 0.0)
        # display: saturating exposure curve, then a contrast (bias) curve, blur and noise
        k = u(0.55, 1.1)
        bright = density / (density + k) * ((1.8 + k) / 1.8)
        c = u(1.6, 2.6)
        bright = bright / (bright + c * (1.0 - bright) + 1e-6)
        bright = binomial_blur(bright, int(self.nrng.integers(0, 3)))
        sigma = u(0.008, 0.028)
        noise = self.nrng.random((3,) + bright.shape).astype(F32)
        bright = bright + sigma * 2.0 * (noise[0] + noise[1] + noise[2] - 1.5)
        image = np.clip(np.floor(np.clip(bright, 0.0, 1.0) * 255.0 + 0.5), 0, 255).astype(np.uint8)
        label_map = np.zeros((self.size, self.size), np.uint8)
        for cls in MASK_ORDER:
            if cls in self.masks:
                label_map[self.masks[cls]] = CLASS_INDEX[cls]
        drawn = sorted(self.drawn, key=CLASS_INDEX.get)
        boxes = [b for b, _ in self.boxes]
        labels = [lab for _, lab in self.boxes]
        return Phantom(
            image=image, label_map=label_map, boxes=boxes, box_labels=labels, drawn=drawn, details=self.details
        )


def render_phantom(findings: list[Finding], size: int, rng: np.random.Generator) -> Phantom:
    """One frontal chest phantom showing `findings` (bundle.data.demo_classes.Finding) at size x size pixels."""
    if size < 64:
        raise ValueError(f"phantom size {size} is too small to show findings (use >= 64)")
    return PhantomRenderer(findings, size, rng).render()
