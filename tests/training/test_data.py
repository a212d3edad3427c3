"""Dataset loading: clear errors naming the file, colour modes converted, masks binarized, fixation maps."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import DatasetError, SaliencyDataset, fixations_by_image, list_pairs, load_mask, load_rgb
from training.transforms import EvalTransform, Preprocess, TrainTransform


@pytest.fixture()
def pair_dirs(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.new("RGB", (12, 8), (10, 20, 30)).save(images / "a.jpg")
    Image.new("L", (12, 8), 0).save(masks / "a.png")
    return images, masks


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"images folder not found: .*nowhere"):
        list_pairs(tmp_path / "nowhere", tmp_path)


def test_image_without_mask_names_the_image(pair_dirs: tuple[Path, Path]) -> None:
    images, masks = pair_dirs
    Image.new("RGB", (4, 4)).save(images / "lonely.png")
    with pytest.raises(DatasetError, match=r"lonely\.png has no mask"):
        list_pairs(images, masks)


def test_split_stem_without_image_and_missing_split(pair_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    images, masks = pair_dirs
    split = tmp_path / "split.txt"
    split.write_text("a\n\nghost\n")
    with pytest.raises(DatasetError, match="'ghost' not found"):
        list_pairs(images, masks, split)
    with pytest.raises(DatasetError, match="split file not found"):
        list_pairs(images, masks, tmp_path / "none.txt")
    split.write_text("a\n")
    assert [s.stem for s in list_pairs(images, masks, split)] == ["a"]


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"cannot read image .*broken\.jpg"):
        load_rgb(broken)
    with pytest.raises(DatasetError, match=r"cannot read mask .*broken\.jpg"):
        load_mask(broken)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_colour_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    if mode == "I;16":
        Image.fromarray(np.full((5, 6), 4000, np.uint16)).save(path)
    else:
        Image.new("RGB", (6, 5), (200, 100, 50)).convert(mode).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (6, 5)
    if mode == "RGBA":  # opaque alpha: colour kept
        assert img.getpixel((0, 0)) == (200, 100, 50)


def test_transparent_pixels_composite_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (3, 3), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png").getpixel((1, 1)) == (255, 255, 255)


def test_masks_binarized_at_128(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8)).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]


def test_size_mismatch_names_both_files(pair_dirs: tuple[Path, Path]) -> None:
    images, masks = pair_dirs
    Image.new("L", (5, 5), 0).save(masks / "a.png")
    dataset = SaliencyDataset(list_pairs(images, masks), EvalTransform(Preprocess(input_size=16)))
    with pytest.raises(DatasetError, match=r"a\.jpg is 12x8 but its mask .*a\.png is 5x5"):
        dataset[0]


def test_fixture_dataset_with_fixation_maps(sod_dir: Path, tmp_path: Path) -> None:
    samples = list_pairs(sod_dir / "images", sod_dir / "masks")
    assert len(samples) == 16
    fixations = fixations_by_image(sod_dir / "fixations.csv", samples)
    assert len(fixations) == 8 and all(p.name.startswith("pascals_") for p in fixations)
    torch.manual_seed(0)
    dataset = SaliencyDataset(samples, TrainTransform(Preprocess(input_size=48)), fixations=fixations)
    for index, sample in enumerate(samples):
        image, mask, density = dataset[index]
        assert image.shape == (3, 48, 48) and mask.shape == density.shape == (1, 48, 48)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert (density.sum() > 0) == (sample.image in fixations)  # ECSSD images carry an all-zero map
    image, mask, density = SaliencyDataset(samples, EvalTransform(Preprocess(input_size=48)), fixations=fixations)[8]
    assert density.sum().item() == pytest.approx(1.0, abs=1e-4) and density.shape[-2:] == mask.shape[-2:]
    other = tmp_path / "fix.csv"
    other.write_text("stem,x,y\nunknown,1,2\n")
    with pytest.raises(DatasetError, match="no fixations for any"):
        fixations_by_image(other, samples)
    other.write_text("stem,col\nx,1\n")
    with pytest.raises(DatasetError, match="lacks columns"):
        fixations_by_image(other, samples)


def test_fixture_copy_is_a_complete_layout(sod_dir: Path, tmp_path: Path) -> None:
    # removing one mask from a copy of the fixtures makes listing fail with that image's name
    copy = tmp_path / "sod"
    shutil.copytree(sod_dir, copy)
    (copy / "masks" / "ecssd_0003.png").unlink()
    with pytest.raises(DatasetError, match=r"ecssd_0003\.jpg has no mask"):
        list_pairs(copy / "images", copy / "masks")
