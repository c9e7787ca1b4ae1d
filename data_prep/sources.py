"""What data prep reads: input listing, ids, person groups and paired input (driver side).

Every entry found under an input is accounted for: it becomes a `Source` (a
photo to process) or a `Skipped` row with a reason, so that
`read = accepted + rejected` holds in dataset_info.json. Folders are walked
following symbolic links but never into a folder that is already being walked
(a link loop such as `ln -s . photos/loop` is one skipped entry), and a file
reached by several paths is read once, under the path with the fewest links.

Ids are paths relative to the input (prefixed with the input's folder name when
several inputs are given), so moving a dataset changes no id, split or seed.
File names that are not valid UTF-8 are read by their bytes and get a
printable id (undecodable bytes as `\\xNN`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Iterable, Sequence

from deocc_jax import errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                    ".jfif", ".ppm", ".pgm", ".pnm")

# Why an entry was not processed (listed in dataset_info.json with the other rejections).
LINK_LOOP = "link_loop"                       # a folder link back into a folder being read
DUPLICATE = "duplicate"                       # the same file, already read under another path
BROKEN_LINK = "broken_link"                   # a link to nothing, or a file link loop
UNSUPPORTED_EXTENSION = "unsupported_extension"
NOT_A_FILE = "not_a_file"                     # fifo, socket, device
UNLISTABLE = "unlistable"                     # a folder that cannot be listed (permissions)
UNPAIRED = "unpaired"                         # paired input: no clean original of that name
LISTING_REASONS = (LINK_LOOP, DUPLICATE, BROKEN_LINK, UNSUPPORTED_EXTENSION, NOT_A_FILE,
                   UNLISTABLE, UNPAIRED)


@dataclasses.dataclass(frozen=True)
class Source:
    """One input photo.

    Attributes:
      source_id: stable, printable id (drives seeds; the default group).
      locator: a file path (str; may hold undecodable bytes as surrogates), or
        ("tfds", name, split, index).
      group: the person (or photo family) it belongs to; all of a group's
        photos go to one split. Defaults to the source id.
      clean_locator: paired input: the clean original's path.
      clean_id: paired input: the clean original's id.
    """
    source_id: str
    locator: Any
    group: str | None = None
    clean_locator: str | None = None
    clean_id: str | None = None

    @property
    def group_key(self) -> str:
        return self.group if self.group is not None else self.source_id


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An entry that was found but not processed."""
    source_id: str
    path: str
    reason: str
    detail: str


def printable(path: str) -> str:
    """A path as text that encodes to UTF-8: undecodable file-name bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_remote(path: str) -> bool:
    return "://" in path


def _glob_regex(pattern: str) -> re.Pattern:
    """Regex for a glob relative to its root: *, ?, [..] within a name, ** across folders."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1:j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclasses.dataclass
class _Candidate:
    rel: str       # relative path (str, may hold surrogates)
    path: str
    links: int     # symbolic links on the way


def walk(root: str) -> tuple[list[_Candidate], list[Skipped]]:
    """Every file under `root` once (by real path), and every entry skipped on the way.

    Folder links are followed, except into a folder that is an ancestor of the
    link (a loop). Files reachable by several paths are kept under the path
    with the fewest links (then the smallest), the others skipped as duplicates.
    """
    files: list[_Candidate] = []
    skipped: list[Skipped] = []

    def skip(rel: str, path: str, reason: str, detail: str) -> None:
        skipped.append(Skipped(printable(rel), printable(path), reason, detail))

    def visit(folder: str, rel: str, ancestors: tuple[str, ...], links: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skip(rel or ".", folder, UNLISTABLE, f"cannot list folder: {e.strerror or e}")
            return
        for entry in entries:
            path = entry.path
            sub_rel = f"{rel}/{entry.name}" if rel else entry.name
            is_link = entry.is_symlink()
            try:
                st = os.stat(path)  # follows links; fails on dangling links and link loops
            except OSError as e:
                skip(sub_rel, path, BROKEN_LINK if is_link else UNLISTABLE,
                     f"{'link' if is_link else 'entry'} cannot be followed: {e.strerror or e}")
                continue
            if entry.is_dir():
                real = os.path.realpath(path)
                if real in ancestors:
                    skip(sub_rel, path, LINK_LOOP,
                         f"folder link back to {printable(real)}, which is being read already")
                    continue
                visit(path, sub_rel, ancestors + (real,), links + int(is_link))
            elif entry.is_file():
                files.append(_Candidate(sub_rel, path, links + int(is_link)))
            else:
                skip(sub_rel, path, NOT_A_FILE, f"not a regular file (mode {st.st_mode:o})")

    visit(root, "", (os.path.realpath(root),), 0)
    by_real: dict[str, list[_Candidate]] = {}
    for c in files:
        by_real.setdefault(os.path.realpath(c.path), []).append(c)
    kept = []
    for real, cands in by_real.items():
        cands.sort(key=lambda c: (c.links, c.rel))
        kept.append(cands[0])
        for c in cands[1:]:
            skip(c.rel, c.path, DUPLICATE, f"same file as {printable(cands[0].rel)}")
    kept.sort(key=lambda c: c.rel)
    return kept, skipped


def _split_glob(spec: str) -> tuple[str, str | None]:
    """(root folder, glob relative to it or None) of an input spec."""
    if not any(ch in spec for ch in "*?["):
        return spec, None
    fixed = re.split(r"[*?\[]", spec, maxsplit=1)[0]
    root = fixed if fixed.endswith(("/", os.sep)) else os.path.dirname(fixed)
    return (root or "."), spec[len(root):].lstrip("/")


def _list_one(spec: str, prefix: str) -> tuple[list[tuple[str, str]], list[Skipped]]:
    """[(id, path)] of image files of one input spec, plus skipped entries."""
    if _is_remote(spec):
        from apache_beam.io.filesystems import FileSystems
        pattern = spec if any(ch in spec for ch in "*?[") else spec.rstrip("/") + "/**"
        root = _split_glob(pattern)[0].rstrip("/")
        paths = sorted({m.path for r in FileSystems.match([pattern]) for m in r.metadata_list})
        cands = [_Candidate(p[len(root):].lstrip("/"), p, 0) for p in paths]
        skipped: list[Skipped] = []
    else:
        root, pattern = _split_glob(spec)
        if not os.path.isdir(root):
            what = "folder of the glob" if pattern else "folder"
            raise errors.InputNotFoundError(
                f"--input {spec!r}: {what} {root!r} does not exist (give a folder, a glob such as "
                "'photos/*.jpg', or tfds:NAME)")
        cands, skipped = walk(root)
        if pattern:
            rx = _glob_regex(pattern)
            cands = [c for c in cands if rx.match(c.rel)]
            skipped = [s for s in skipped if rx.match(s.source_id) or s.reason == LINK_LOOP]
    out = []
    for c in cands:
        rel = printable(c.rel).replace(os.sep, "/")
        if c.rel.lower().endswith(IMAGE_EXTENSIONS):
            out.append((prefix + rel, c.path))
        else:
            skipped.append(Skipped(rel, printable(c.path), UNSUPPORTED_EXTENSION,
                                   f"extension is not one of {' '.join(IMAGE_EXTENSIONS)}"))
    skipped = [dataclasses.replace(s, source_id=prefix + s.source_id) if prefix else s
               for s in skipped]
    return out, skipped


def input_prefixes(specs: Sequence[str]) -> list[str]:
    """Id prefixes: none for one input, else each input's folder name and '/'."""
    if len(specs) == 1:
        return [""]
    names = [os.path.basename(os.path.normpath(_split_glob(s)[0])) for s in specs]
    if len(set(names)) != len(names):
        raise errors.InvalidInputError(
            f"--input: several inputs share a folder name ({names}); ids are prefixed with it, so "
            "each input needs a distinct folder name")
    return [n + "/" for n in names]


def list_sources(specs: Sequence[str], group_by: str | None = None
                 ) -> tuple[list[Source], list[Skipped]]:
    """Sources and skipped entries of one or more input folders or globs.

    Args:
      specs: folders (searched recursively, links followed without loops) or
        globs such as 'photos/**/*.jpg'; local or Beam filesystem paths.
      group_by: see `group_of`.

    Raises:
      errors.InputNotFoundError: an input does not exist or holds no image.
    """
    sources, skipped = [], []
    for spec, prefix in zip(specs, input_prefixes(specs)):
        found, skip = _list_one(spec, prefix)
        if not found:
            raise errors.InputNotFoundError(
                f"--input {spec!r}: no image files found ({len(skip)} other entries; image "
                f"extensions: {' '.join(IMAGE_EXTENSIONS)})")
        sources += [Source(sid, path, group=group_of(sid, group_by)) for sid, path in found]
        skipped += skip
    _check_unique([s.source_id for s in sources] + [s.source_id for s in skipped])
    if skipped:
        logging.info("data_prep: %d entries skipped while listing, e.g. %s", len(skipped),
                     [(s.source_id, s.reason) for s in skipped[:3]])
    return sources, skipped


def _check_unique(ids: Iterable[str]) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise errors.InvalidInputError(f"two inputs map to the same id {i!r}")
        seen.add(i)


def group_of(source_id: str, group_by: str | None) -> str | None:
    """The person a source belongs to under a `--group_by` regex, or None (its own group).

    The regex is searched in the id; its first group (or the whole match when
    it has none) names the person. Ids that do not match form their own group.
    """
    if not group_by:
        return None
    m = re.search(group_by, source_id)
    if not m:
        return None
    return "group:" + (m.group(1) if m.re.groups else m.group(0))


# ----------------------------------------------------------------------------
# Paired input: occluded photos matched to clean originals by name.
# ----------------------------------------------------------------------------

def _stem(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def clean_index(clean_dir: str) -> dict[str, tuple[str, str]]:
    """stem -> (clean id, path) of the image files under `clean_dir`.

    Raises:
      errors.InputNotFoundError: the folder does not exist or holds no image.
      errors.InvalidInputError: two clean files share a stem (matching would
        be ambiguous).
    """
    found, _ = _list_one(clean_dir, "")
    if not found:
        raise errors.InputNotFoundError(f"--clean_dir {clean_dir!r}: no image files found")
    index: dict[str, tuple[str, str]] = {}
    for cid, path in found:
        stem = _stem(cid)
        if stem in index:
            raise errors.InvalidInputError(
                f"--clean_dir {clean_dir!r}: {index[stem][0]!r} and {cid!r} have the same name "
                f"{stem!r}; occluded photos are matched to clean ones by name, so names must be unique")
        index[stem] = (cid, path)
    return index


def match_clean(occluded_id: str, index: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """The clean original of an occluded photo, by name.

    The occluded file's name (without extension) equals the clean one's, or
    starts with it followed by '_' (MaskedFace-Net: 00012.png ->
    00012_Mask.jpg, 00012_Mask_Mouth_Chin.jpg); the longest such name wins.
    """
    stem = _stem(occluded_id)
    if stem in index:
        return index[stem]
    parts = stem.split("_")
    for k in range(len(parts) - 1, 0, -1):
        hit = index.get("_".join(parts[:k]))
        if hit:
            return hit
    return None


def pair_sources(sources: list[Source], clean_dir: str, group_by: str | None = None
                 ) -> tuple[list[Source], list[Skipped], int]:
    """Attaches each occluded source's clean original; unmatched ones become skipped.

    A pair's group is its clean original's (`group_of` the clean id, else the
    clean id itself), so every occluded version of a photo lands in one split.

    Returns:
      (paired sources grouped by their clean original, skipped, number of
      clean photos no occluded photo matched).
    """
    index = clean_index(clean_dir)
    paired, skipped, used = [], [], set()
    for s in sources:
        hit = match_clean(s.source_id, index)
        if hit is None:
            skipped.append(Skipped(s.source_id, printable(s.locator), UNPAIRED,
                                   f"no clean photo named like it in --clean_dir {clean_dir}"))
            continue
        cid, cpath = hit
        used.add(cid)
        paired.append(dataclasses.replace(s, group=group_of(cid, group_by) or "clean:" + cid,
                                          clean_locator=cpath, clean_id=cid))
    if not paired:
        raise errors.InvalidInputError(
            f"--clean_dir {clean_dir!r}: none of the {len(sources)} occluded photos has a clean "
            "original of the same name (e.g. 00012.png for 00012_Mask.jpg)")
    return paired, skipped, len(index) - len(used)
