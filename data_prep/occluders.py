"""Image occluders: the catalogue of an occluders folder, and their placement on a face.

An occluders folder is laid out like `../shared/occluders`: one sub-folder per
category of RGBA PNGs, optionally `MANIFEST.tsv` and
`face_masks/anchors_masktheface.json` (MaskTheFace's six anchor points per
template, which place a mask by homography). `OccluderLibrary` loads it;
`render_image` warps one of its images onto a face (`geometry.FaceGeometry`).
Procedural occluders are in `procedural`, mask prints and colours in
`mask_styles`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os

import cv2
import numpy as np

from data_prep.geometry import FaceGeometry, Layer
from data_prep.procedural import PROCEDURAL
from deocc_jax.faces import landmarks as L

# Sub-folder -> category name written into records.
CATEGORY_DIRS = {
    "face_masks": "face_mask",
    "sunglasses": "sunglasses",
    "eyeglasses": "eyeglasses",
    "hands": "hand",
    "microphones": "microphone",
    "cups": "cup",
    "phones": "phone",
    "hats": "hat",
    "scarves": "scarf",
    "hair": "hair",
    "other": "other",
}
ALL_CATEGORIES = tuple(sorted(set(CATEGORY_DIRS.values()) | {PROCEDURAL}))

# Occluder images are shrunk to this longest side once at load: crops are at
# most 512 px and an occluder spans at most ~1.5 face widths (~0.9 crop).
_MAX_SIDE = 512
_ANCHOR_KEYS = ("mask_a", "mask_b", "mask_c", "mask_f", "mask_e", "mask_d")


# ----------------------------------------------------------------------------
# Image occluders.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageOccluder:
    category: str
    relpath: str                                # relative to the occluders folder
    anchors: tuple[tuple[float, float], ...] | None  # MaskTheFace a,b,c,f,e,d (template px)
    pose: str                                   # "frontal", "left" or "right"

    @property
    def family(self) -> str:
        """Template family shared by the frontal/left/right views of one mask."""
        stem = os.path.splitext(os.path.basename(self.relpath))[0]
        for suffix in ("_left", "_right"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem


class OccluderLibrary:
    """The image occluders of one folder, loaded lazily and cached per process.

    Args:
      root: folder with one sub-folder per category (see CATEGORY_DIRS).
    """

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"occluders folder {root!r} does not exist")
        self.root = root
        anchors = {}
        anchor_file = os.path.join(root, "face_masks", "anchors_masktheface.json")
        if os.path.exists(anchor_file):
            with open(anchor_file) as f:
                anchors = json.load(f)["templates"]
        items = []
        for folder, category in sorted(CATEGORY_DIRS.items()):
            d = os.path.join(root, folder)
            if not os.path.isdir(d):
                continue
            for name in sorted(os.listdir(d)):
                if not name.lower().endswith(".png"):
                    continue
                rel = f"{folder}/{name}"
                a = anchors.get(rel)
                items.append(ImageOccluder(
                    category=category, relpath=rel,
                    anchors=tuple(tuple(map(float, a[k])) for k in _ANCHOR_KEYS) if a else None,
                    pose=(a or {}).get("pose") or _pose_from_name(name)))
        if not items:
            raise FileNotFoundError(
                f"no occluder PNGs in {root!r}: expected sub-folders {sorted(CATEGORY_DIRS)}")
        self.items = tuple(items)
        self.by_category: dict[str, tuple[ImageOccluder, ...]] = {}
        for it in items:
            self.by_category.setdefault(it.category, ())
            self.by_category[it.category] += (it,)

    @functools.cached_property
    def version(self) -> str:
        """sha256 over the manifest (if any) and every occluder file's name and bytes."""
        h = hashlib.sha256()
        manifest = os.path.join(self.root, "MANIFEST.tsv")
        if os.path.exists(manifest):
            with open(manifest, "rb") as f:
                h.update(f.read())
        for it in self.items:
            h.update(it.relpath.encode())
            with open(os.path.join(self.root, it.relpath), "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        return h.hexdigest()

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one library per worker, lives as long
    def load(self, relpath: str) -> tuple[np.ndarray, float]:
        """(RGBA uint8 image, scale applied) of one occluder, shrunk to <= _MAX_SIDE."""
        from PIL import Image
        path = os.path.join(self.root, relpath)
        try:
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"occluder image {path!r} cannot be read: {e}") from None
        scale = min(1.0, _MAX_SIDE / max(rgba.shape[:2]))
        if scale < 1.0:
            size = (max(1, round(rgba.shape[1] * scale)), max(1, round(rgba.shape[0] * scale)))
            rgba = _resize_rgba(rgba, size)
        return rgba, scale


    @functools.lru_cache(maxsize=256)  # noqa: B019
    def load_level(self, relpath: str, level: int) -> tuple[np.ndarray, float, float]:
        """The occluder halved `level` times (area filter): (rgba, fx, fy) with the
        x/y factors from `load`'s image. Cached, so a warm worker never resizes."""
        rgba, _ = self.load(relpath)
        if level <= 0:
            return rgba, 1.0, 1.0
        f = 0.5 ** level
        size = (max(1, round(rgba.shape[1] * f)), max(1, round(rgba.shape[0] * f)))
        return _resize_rgba(rgba, size), size[0] / rgba.shape[1], size[1] / rgba.shape[0]

    @functools.lru_cache(maxsize=None)  # noqa: B019
    def outline(self, relpath: str) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
        """(alpha bbox, centroid relative to the bbox) of an occluder.

        For glasses the centroid is that of the lenses: the alpha after an
        opening as wide as a fifteenth of the image, which removes arms and
        thin frames (drawn in perspective they would pull the centroid off
        the lens line). Clear lenses with thin frames leave too little; then
        the whole alpha's centroid is used.
        """
        rgba, _ = self.load(relpath)
        bbox = alpha_bbox(rgba)
        if relpath.split("/")[0] in ("sunglasses", "eyeglasses"):
            k = max(3, int(round((bbox[2] - bbox[0]) / 15)) | 1)
            solid = cv2.morphologyEx((rgba[..., 3] > 128).astype(np.uint8), cv2.MORPH_OPEN,
                                     cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
            if solid.sum() > 0.1 * (rgba[..., 3] > 128).sum():
                lens = rgba.copy()
                lens[..., 3] = solid * 255
                return bbox, alpha_centroid_rel(lens, bbox)
        return bbox, alpha_centroid_rel(rgba, bbox)


def _pose_from_name(name: str) -> str:
    stem = os.path.splitext(name)[0]
    return "left" if stem.endswith("_left") else "right" if stem.endswith("_right") else "frontal"


def _resize_rgba(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resize with premultiplied alpha (no dark fringes)."""
    f = rgba.astype(np.float32) / 255.0
    prem = np.concatenate([f[..., :3] * f[..., 3:], f[..., 3:]], -1)
    prem = cv2.resize(prem, size, interpolation=cv2.INTER_AREA)
    a = prem[..., 3:]
    rgb = prem[..., :3] / np.maximum(a, 1e-6)
    return np.clip(np.rint(np.concatenate([rgb, a], -1) * 255), 0, 255).astype(np.uint8)


def alpha_bbox(rgba: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the non-transparent pixels."""
    ys, xs = np.nonzero(rgba[..., 3] > 8)
    if len(xs) == 0:
        return 0.0, 0.0, float(rgba.shape[1]), float(rgba.shape[0])
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _matrix_scale(H: np.ndarray) -> float:
    """Linear scale of a 3x3 transform near its origin (exact for similarities)."""
    H = np.asarray(H, np.float64)
    return math.sqrt(abs(np.linalg.det(H[:2, :2])) / max(abs(H[2, 2]), 1e-9) ** 2)


def alpha_centroid_rel(rgba: np.ndarray, bbox) -> tuple[float, float]:
    """Alpha-weighted centroid as fractions of `bbox`."""
    a = rgba[..., 3].astype(np.float64)
    total = a.sum()
    if total <= 0:
        return 0.5, 0.5
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    x0, y0, x1, y1 = bbox
    return (float((xs * a).sum() / total - x0) / max(x1 - x0, 1.0),
            float((ys * a).sum() / total - y0) / max(y1 - y0, 1.0))


def warp_rgba(rgba: np.ndarray, H: np.ndarray, res: int) -> Layer:
    """Warps an RGBA uint8 image by a 3x3 homography into a res x res Layer.

    Premultiplied so that edges blend towards the occluder's colour, not black;
    strong downscales shrink the source first (warping samples, it does not average).
    """
    H = np.asarray(H, np.float64)
    scale = _matrix_scale(H)
    if scale < 0.5:
        f = 2.0 * scale
        size = (max(1, round(rgba.shape[1] * f)), max(1, round(rgba.shape[0] * f)))
        fx, fy = size[0] / rgba.shape[1], size[1] / rgba.shape[0]
        rgba = _resize_rgba(rgba, size)
        H = H @ np.diag([1 / fx, 1 / fy, 1.0])
    f = rgba.astype(np.float32) / 255.0
    prem = np.concatenate([f[..., :3] * f[..., 3:], f[..., 3:]], -1)
    out = cv2.warpPerspective(prem, H, (res, res), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = np.clip(out[..., 3], 0, 1)
    rgb = np.clip(out[..., :3] / np.maximum(a, 1e-6)[..., None], 0, 1)
    return rgb.astype(np.float32), a.astype(np.float32)


def placement(bbox, anchor_rel, target, width, angle, flip=False) -> np.ndarray:
    """3x3 similarity putting point `anchor_rel` (fractions of bbox) on `target`,
    scaling the bbox to `width` pixels and rotating by `angle` radians."""
    x0, y0, x1, y1 = bbox
    ax, ay = x0 + anchor_rel[0] * (x1 - x0), y0 + anchor_rel[1] * (y1 - y0)
    s = width / max(x1 - x0, 1.0)
    c, si = math.cos(angle) * s, math.sin(angle) * s
    fx = -1.0 if flip else 1.0
    # translate anchor to 0, mirror, scale+rotate, translate to target
    T0 = np.array([[1, 0, -ax], [0, 1, -ay], [0, 0, 1]], np.float64)
    F = np.diag([fx, 1.0, 1.0])
    R = np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]], np.float64)
    T1 = np.array([[1, 0, target[0]], [0, 1, target[1]], [0, 0, 1]], np.float64)
    return T1 @ R @ F @ T0


def face_mask_points(geo: FaceGeometry) -> np.ndarray:
    """MaskTheFace's six face points a, b, c, f, e, d (see anchors_masktheface.json)."""
    nose = geo.p(L.NOSE_TIP)
    a, c = geo.oval_crossings(nose)
    b = (geo.p(L.NOSE_BRIDGE_TOP) + nose) / 2
    d, f = geo.oval_crossings(geo.p(17))  # 17: bottom of the lower lip
    e = geo.p(L.CHIN)
    # Turned heads: keep the side anchors beyond the mouth corners, the top ones below the eyes.
    a, d = geo.clear_of_mouth(a, -1), geo.clear_of_mouth(d, -1)
    c, f = geo.clear_of_mouth(c, 1), geo.clear_of_mouth(f, 1)
    a, b, c = geo.below_eyes(np.stack([a, b, c]))
    return np.stack([a, b, c, f, e, d])


def _bbox_anchors(bbox) -> np.ndarray:
    """Six anchors for a mask image without MaskTheFace points, from its outline."""
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    return np.array([[x0, y0 + 0.22 * h], [x0 + 0.5 * w, y0], [x1, y0 + 0.22 * h],
                     [x1 - 0.06 * w, y0 + 0.62 * h], [x0 + 0.5 * w, y1 - 0.02 * h],
                     [x0 + 0.06 * w, y0 + 0.62 * h]])


def pick_face_mask(items: tuple[ImageOccluder, ...], geo: FaceGeometry,
                   rng: np.random.Generator) -> ImageOccluder:
    """A mask template family at random, in the view that matches the head's yaw.

    MaskTheFace uses its *_left templates when the nose points to the image's
    left, *_right when it points right.
    """
    families = sorted({it.family for it in items})
    family = families[rng.integers(len(families))]
    views = {it.pose: it for it in items if it.family == family}
    pose = "left" if geo.yaw < -0.08 else "right" if geo.yaw > 0.08 else "frontal"
    return views.get(pose) or views.get("frontal") or next(iter(views.values()))


def glasses_transform(bbox, centroid, geo: FaceGeometry, rng: np.random.Generator) -> np.ndarray:
    """3x3 matrix putting a glasses image on the face's glasses plane, posed with the head.

    Lenses (and rims) hold most of the opaque pixels, so the image's alpha
    centroid marks the lens line even in images drawn in perspective; it goes
    between the eyes. The image's width is 1.35-1.7 outer eye-corner
    distances (a glasses front), in the plane just before the nose bridge,
    then projected with the head pose: a turned head foreshortens the glasses
    and moves them with the eyes, a tilted one tilts them.
    """
    centre, outer, depth = geo.glasses_frame()
    x0, y0, x1, y1 = bbox
    width = outer * rng.uniform(1.35, 1.7)
    height = width * (y1 - y0) / max(x1 - x0, 1.0)
    cx, cy = centroid
    centre = centre + np.array([*rng.normal(0, 0.015, 2) * outer * 1.9, 0.0])
    a = math.radians(rng.uniform(-3, 3))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    src = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    rel = np.array([[-cx * width, -cy * height], [(1 - cx) * width, -cy * height],
                    [(1 - cx) * width, (1 - cy) * height], [-cx * width, (1 - cy) * height]])
    flat = rel @ rot.T + centre[:2]
    dst = geo.project(np.concatenate([flat, np.full((4, 1), depth)], 1))
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def image_transform(item: ImageOccluder, outline, scale: float, geo: FaceGeometry,
                    rng: np.random.Generator) -> np.ndarray:
    """3x3 matrix from occluder pixels to crop pixels, by category.

    Args:
      item: the occluder.
      outline: `OccluderLibrary.outline(item.relpath)`.
      scale: the factor `OccluderLibrary.load` shrank the image by.
      geo: the face.
      rng: random source.
    """
    bbox, centroid = outline
    fw, fh = geo.face_width, geo.face_height
    jitter = lambda s: rng.normal(0, s, 2) * fw  # noqa: E731
    tilt = lambda deg: geo.angle + math.radians(rng.uniform(-deg, deg))  # noqa: E731
    cat = item.category
    if cat == "face_mask":
        src = (np.array(item.anchors) * scale) if item.anchors else _bbox_anchors(bbox)
        dst = face_mask_points(geo) + rng.normal(0, 0.015, (6, 2)) * fw
        H, _ = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), 0)
        if H is not None:
            return H
        return placement(bbox, (0.5, 0.3), geo.mouth, fw * 1.0, geo.angle)
    if cat in ("sunglasses", "eyeglasses"):
        return glasses_transform(bbox, centroid, geo, rng)
    if cat == "hand":
        targets = [geo.mouth, geo.left_eye, geo.right_eye, geo.p(L.LEFT_CHEEK) * 0.6 + geo.mouth * 0.4,
                   geo.p(L.RIGHT_CHEEK) * 0.6 + geo.mouth * 0.4, geo.p(L.CHIN)]
        t = targets[rng.integers(len(targets))]
        return placement(bbox, (0.5, rng.uniform(0.3, 0.6)), t + jitter(0.05),
                         fw * rng.uniform(0.5, 0.95), tilt(45), flip=rng.random() < 0.5)
    if cat == "microphone":
        return placement(bbox, (0.5, rng.uniform(0.05, 0.25)),
                         geo.mouth + geo.down * fh * rng.uniform(0.0, 0.12) + jitter(0.04),
                         fw * rng.uniform(0.3, 0.55), tilt(30), flip=rng.random() < 0.5)
    if cat == "cup":
        return placement(bbox, (0.5, rng.uniform(0.1, 0.3)),
                         geo.mouth + geo.down * fh * rng.uniform(0.05, 0.18) + jitter(0.05),
                         fw * rng.uniform(0.4, 0.7), tilt(20), flip=rng.random() < 0.5)
    if cat == "phone":
        if rng.random() < 0.5:  # held to an ear
            side = L.LEFT_CHEEK if rng.random() < 0.5 else L.RIGHT_CHEEK
            t = geo.p(side) * 0.8 + geo.mouth * 0.2
            return placement(bbox, (0.5, 0.5), t + jitter(0.04), fw * rng.uniform(0.3, 0.5),
                             tilt(35), flip=rng.random() < 0.5)
        return placement(bbox, (0.5, 0.5), geo.mouth + jitter(0.08), fw * rng.uniform(0.45, 0.75),
                         tilt(20), flip=rng.random() < 0.5)
    if cat in ("hat", "hair"):
        t = geo.brow_mid - geo.down * fh * rng.uniform(-0.05, 0.15)
        return placement(bbox, (0.5, rng.uniform(0.85, 0.97)), t + jitter(0.02),
                         fw * rng.uniform(1.1, 1.5), tilt(6), flip=rng.random() < 0.5)
    if cat == "scarf":
        t = geo.p(L.NOSE_TIP) * (1 - (k := rng.uniform(0.2, 0.7))) + geo.p(L.CHIN) * k
        return placement(bbox, (0.5, rng.uniform(0.1, 0.3)), t + jitter(0.02),
                         fw * rng.uniform(1.1, 1.5), tilt(8), flip=rng.random() < 0.5)
    # "other" and any unknown category: somewhere on the face.
    t = geo.lm[rng.integers(len(geo.lm))]
    return placement(bbox, (0.5, 0.5), t, fw * rng.uniform(0.3, 0.7), tilt(40), flip=rng.random() < 0.5)


def render_image(library: OccluderLibrary, category: str, geo: FaceGeometry,
                 rng: np.random.Generator) -> tuple[Layer, str]:
    """An image occluder of `category` placed on the face; returns (layer, relpath)."""
    items = library.by_category[category]
    if category == "face_mask":
        item = pick_face_mask(items, geo, rng)
    else:
        item = items[rng.integers(len(items))]
    _, scale = library.load(item.relpath)
    H = image_transform(item, library.outline(item.relpath), scale, geo, rng)
    # Shrink by cached powers of two so the warp itself never downscales > 2x.
    level = max(0, int(math.floor(-math.log2(max(_matrix_scale(H), 1e-6)))))
    small, fx, fy = library.load_level(item.relpath, level)
    return warp_rgba(small, H @ np.diag([1 / fx, 1 / fy, 1.0]), geo.res), item.relpath
