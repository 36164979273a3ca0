"""Image checks: PDQ hash matching and its index, NSFW detection, decoding of bad files."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from moderation.images.decode import UncheckableMedia, read_image, read_video, sniff
from moderation.images.hashing import (
    HashIndex,
    HashListError,
    HashRegistry,
    configured_lists,
    from_hex,
    pdq_hashes,
    read_hash_file,
    to_hex,
)
from moderation.images.nsfw import explicit_score, get_detector
from tests.moderation.imagegen import jpeg_resized, noise, nsfw_figure, save, scene, solid

MAX_PIXELS = 80_000_000


def hash_of(path: Path) -> np.ndarray:
    frames = read_image(path, max_pixels=MAX_PIXELS)
    return pdq_hashes(frames.frames[0])[0]


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


# -- the index --------------------------------------------------------------------------------

def test_index_agrees_with_brute_force() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)
    index = HashIndex(base)
    for i in range(200):
        target = int(rng.integers(0, len(base)))
        bits = np.unpackbits(base[target])
        flip = rng.choice(256, int(rng.integers(0, 40)), replace=False)
        bits[flip] ^= 1
        query = np.packbits(bits)
        found, dist = index.query(query, 31)
        brute = np.unpackbits(base ^ query, axis=1).sum(axis=1)
        want = set(np.nonzero(brute <= 31)[0].tolist())
        assert set(found.tolist()) == want, i
        assert all(brute[f] == d for f, d in zip(found, dist, strict=True))
        assert list(dist) == sorted(dist)


def test_index_answers_several_queries_and_wide_radii() -> None:
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (5_000, 32), dtype=np.uint8)
    index = HashIndex(base)
    found, _ = index.query(np.stack([base[10], base[20]]), 0)
    assert set(found.tolist()) == {10, 20}
    found, dist = index.query(base[30], 60)  # radius 3: the scan path
    assert 30 in found.tolist() and dist[0] == 0
    empty = HashIndex(np.empty((0, 32), np.uint8))
    assert empty.query(base[0], 31)[0].size == 0


# -- PDQ robustness ----------------------------------------------------------------------------

def test_near_copies_match_and_other_images_do_not(tmp_path: Path) -> None:
    original = scene(7)
    h0 = hash_of(save(original, tmp_path / "original.png"))
    (tmp_path / "small.jpg").write_bytes(jpeg_resized(original, 0.9, quality=70))
    (tmp_path / "large.jpg").write_bytes(jpeg_resized(original, 1.1, quality=60))
    cropped = original[10:-10, 10:-10]  # 1% off each side
    mirrored = original[:, ::-1].copy()
    near = {
        "jpeg + 10% smaller": hash_of(tmp_path / "small.jpg"),
        "jpeg + 10% larger": hash_of(tmp_path / "large.jpg"),
        "1% crop": hash_of(save(cropped, tmp_path / "crop.png")),
        "webp": hash_of(save(original, tmp_path / "copy.webp", quality=80)),
    }
    for name, hashes in near.items():
        assert distance(h0[0], hashes[0]) <= 31, name
    # a mirror image matches through the dihedral variants
    mirrored_hashes = hash_of(save(mirrored, tmp_path / "mirror.png"))
    assert min(distance(h0[0], h) for h in mirrored_hashes) <= 31
    other = hash_of(save(scene(8), tmp_path / "other.png"))
    assert min(distance(h0[0], h) for h in other) > 31


def test_flat_images_have_low_quality_hashes(tmp_path: Path) -> None:
    frames = read_image(save(solid((10, 200, 30)), tmp_path / "flat.png"), max_pixels=MAX_PIXELS)
    _, quality = pdq_hashes(frames.frames[0])
    assert quality < 50
    frames = read_image(save(scene(1), tmp_path / "busy.png"), max_pixels=MAX_PIXELS)
    assert pdq_hashes(frames.frames[0])[1] >= 50


def test_registry_reports_list_and_entry(tmp_path: Path) -> None:
    a, b = scene(1), scene(2)
    ha = hash_of(save(a, tmp_path / "a.png"))[0]
    hb = hash_of(save(b, tmp_path / "b.png"))[0]
    registry = HashRegistry([("csam/one.pdq", "csam", np.stack([hb])),
                             ("violence/two.pdq", "violence", np.stack([ha, hb]))])
    (tmp_path / "a.jpg").write_bytes(jpeg_resized(a, 0.9))
    matches = registry.match(hash_of(tmp_path / "a.jpg"), 31)
    assert [(m.list_name, m.category, m.entry) for m in matches] == [("violence/two.pdq", "violence", 0)]
    assert matches[0].entry_hash == to_hex(ha)


# -- hash list files ---------------------------------------------------------------------------

def test_hash_files_in_every_format(tmp_path: Path) -> None:
    rows = np.random.default_rng(5).integers(0, 256, (3, 32), dtype=np.uint8)
    hexes = [to_hex(r) for r in rows]
    (tmp_path / "plain.pdq").write_text("# list v1\n" + "\n".join(hexes) + "\n\n")
    (tmp_path / "with.csv").write_text("hash,quality\n" + "\n".join(f"{h},100" for h in hexes))
    np.save(tmp_path / "array.npy", rows)
    for name in ("plain.pdq", "with.csv", "array.npy"):
        assert (read_hash_file(tmp_path / name) == rows).all(), name
    assert (from_hex(hexes[0]) == rows[0]).all()


def test_malformed_or_missing_lists_raise(tmp_path: Path) -> None:
    (tmp_path / "bad.pdq").write_text("0" * 64 + "\nnot a hash 123\n")
    with pytest.raises(HashListError, match="no 64-hex"):
        read_hash_file(tmp_path / "bad.pdq")
    np.save(tmp_path / "bad.npy", np.zeros((2, 16), np.uint8))
    with pytest.raises(HashListError, match="uint8 array"):
        read_hash_file(tmp_path / "bad.npy")
    with pytest.raises(HashListError):
        read_hash_file(tmp_path / "missing.pdq")
    with pytest.raises(HashListError, match="category=path"):
        configured_lists(tmp_path / "none", "just-a-path")


def test_list_directory_convention(tmp_path: Path) -> None:
    (tmp_path / "csam").mkdir()
    (tmp_path / "csam" / "ncmec.pdq").write_text("")
    (tmp_path / "csam" / "readme.md").write_text("ignored")
    (tmp_path / "violence").mkdir()
    (tmp_path / "violence" / "gifct.npy").write_bytes(b"")
    found = configured_lists(tmp_path, "hate=/lists/hate.pdq")
    assert [(c, p.name) for c, p in found] == [("csam", "ncmec.pdq"), ("violence", "gifct.npy"),
                                               ("hate", "hate.pdq")]


# -- NSFW detection ----------------------------------------------------------------------------

def test_detector_scores_the_drawn_figure_and_not_the_rest(tmp_path: Path) -> None:
    detector = get_detector()
    scores = {}
    for name, img in {"figure": nsfw_figure(), "scene": scene(3), "noise": noise(1),
                      "white": solid((255, 255, 255)), "black": solid((0, 0, 0))}.items():
        frames = read_image(save(img, tmp_path / f"{name}.png"), max_pixels=MAX_PIXELS)
        scores[name] = explicit_score(detector.class_scores(frames.frames[0]))
    assert scores["figure"] >= 0.75, scores
    for name in ("scene", "noise", "white", "black"):
        assert scores[name] < 0.6, scores


def test_detector_matches_the_package_wrapper(tmp_path: Path) -> None:
    from nudenet import NudeDetector

    path = save(nsfw_figure(320), tmp_path / "figure.png")
    theirs = {d["class"]: d["score"] for d in NudeDetector().detect(str(path))}
    ours = get_detector().class_scores(read_image(path, max_pixels=MAX_PIXELS).frames[0])
    best = max(theirs, key=theirs.get)
    assert ours[best] == pytest.approx(theirs[best], abs=0.05)


# -- decoding bad files ------------------------------------------------------------------------

def test_truncated_corrupt_and_huge_images_are_uncheckable(tmp_path: Path) -> None:
    good = save(scene(4, 256), tmp_path / "good.png")
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    jpeg = jpeg_resized(scene(4, 256), 1.0)
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    for name in ("truncated.png", "garbage.png", "truncated.jpg"):
        with pytest.raises(UncheckableMedia):
            read_image(tmp_path / name, max_pixels=MAX_PIXELS)
    # a decompression bomb: a tiny file that claims a giant canvas
    bomb = Image.new("1", (30_000, 30_000))
    bomb.save(tmp_path / "bomb.png", optimize=True)
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    with pytest.raises(UncheckableMedia, match="decompression bomb"):
        read_image(tmp_path / "bomb.png", max_pixels=MAX_PIXELS)
    # under Pillow's own guard but over ours
    with pytest.raises(UncheckableMedia, match="over the checkable size"):
        read_image(save(scene(4, 1200), tmp_path / "big.png"), max_pixels=1_000_000)


def test_damaged_pixel_data_never_crashes(tmp_path: Path) -> None:
    data = bytearray(save(scene(9, 600), tmp_path / "ok.png").read_bytes())
    rng = np.random.default_rng(9)
    for trial in range(20):
        damaged = bytearray(data)
        for pos in rng.integers(100, len(data), 8):
            damaged[pos] ^= 0xFF
        path = tmp_path / f"damaged{trial}.png"
        path.write_bytes(bytes(damaged))
        try:
            frames = read_image(path, max_pixels=MAX_PIXELS)
        except UncheckableMedia:
            continue
        assert frames.frames[0].dtype == np.uint8


def test_modes_alpha_and_animation(tmp_path: Path) -> None:
    rgba = np.dstack([scene(5, 300), np.full((300, 300), 128, np.uint8)])
    frames = read_image(save(rgba, tmp_path / "alpha.png"), max_pixels=MAX_PIXELS)
    assert frames.frames[0].shape == (300, 300, 3)
    gray = read_image(save(scene(5, 300)[:, :, 0], tmp_path / "gray.png"), max_pixels=MAX_PIXELS)
    assert gray.frames[0].shape == (300, 300, 3)
    images = [Image.fromarray(scene(s, 200)) for s in range(12)]
    images[0].save(tmp_path / "anim.gif", save_all=True, append_images=images[1:], duration=50)
    anim = read_image(tmp_path / "anim.gif", max_pixels=MAX_PIXELS, max_frames=4)
    assert anim.total_frames == 12 and len(anim.frames) == 4
    big = read_image(save(scene(6, 2000), tmp_path / "big.jpg", quality=90), max_pixels=MAX_PIXELS)
    assert max(big.frames[0].shape[:2]) <= 512


def test_video_frames_are_sampled(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for i in range(30):
        writer.write(cv2.cvtColor(scene(i, 320)[:240], cv2.COLOR_RGB2BGR))
    writer.release()
    frames = read_video(path, samples=5, max_pixels=MAX_PIXELS)
    assert frames.total_frames == 30 and len(frames.frames) == 5
    (tmp_path / "broken.mp4").write_bytes(path.read_bytes()[:200])
    with pytest.raises(UncheckableMedia):
        read_video(tmp_path / "broken.mp4", samples=5, max_pixels=MAX_PIXELS)


def test_sniffing() -> None:
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, "PNG")
    assert sniff(png.getvalue()) == "image"
    assert sniff(b"\x00\x00\x00\x18ftypisom") == "video"
    assert sniff(b"\x00\x00\x00\x18ftypavif") == "image"
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "audio"
    assert sniff(b"ID3\x03") == "audio"
    assert sniff(b'{"a": 1}', "out.json") == "text"
    assert sniff(b"\x7fELF\x02") == "unknown"
