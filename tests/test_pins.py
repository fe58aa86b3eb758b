"""Pins (pins.py): folders too small to split, files that are not images, hidden entries and
16-bit images, and a Pins pretraining that refuses to resume on other data or another recipe."""
import os
import traceback

import numpy as np
import pytest
import torch
from helpers import describe, run_inprocess
from PIL import Image

import datasets
import pins
from cli import UserError, one_line

FOLDER = "105_classes_pins_dataset"


PRETRAIN = ["pretrain_model.py", "-net", "SmallCNN", "-dataset", "PinsFaceRecognition", "-classes", "105",
            "-epochs", "1", "-b", "8"]


def _pins(root, people=3, each=5, seed=0):
    rng = np.random.default_rng(seed)
    for p in range(people):
        (root / FOLDER / f"pins_{p}").mkdir(parents=True, exist_ok=True)
        for i in range(each):
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / FOLDER / f"pins_{p}" / f"{i}.png")
    return root / FOLDER


@pytest.mark.parametrize("hidden", [".ipynb_checkpoints", ".a_hidden_person"])
def test_hidden_entries_in_the_pins_folder_are_ignored(tmp_path, hidden):
    folder = _pins(tmp_path)
    want = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    (folder / hidden).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / hidden / "0.png")
    (folder / "pins_1" / ".hidden.png").write_bytes(b"not an image")  # a stray hidden file
    (folder / "pins_1" / "._1.png").write_bytes(b"\0\5\26\7")  # macOS's AppleDouble companion
    got = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    assert got.classes == want.classes == ["pins_0", "pins_1", "pins_2"]
    assert got.paths == want.paths and list(got.targets) == list(want.targets)


def test_a_file_at_the_top_of_the_pins_folder_is_no_person(tmp_path):
    folder = _pins(tmp_path)
    (folder / "README.txt").write_text("105 people")
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    assert ds.classes == ["pins_0", "pins_1", "pins_2"]


@pytest.mark.parametrize("grey16", [0, 257, 32896, 51400, 65535])
def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path, grey16):
    folder = _pins(tmp_path, people=1, each=1)
    Image.fromarray(np.full((40, 30), grey16, np.uint16)).save(folder / "pins_0" / "0.png")
    with Image.open(folder / "pins_0" / "0.png") as im:
        assert im.mode.startswith("I"), im.mode  # Pillow reads it as a 16-bit image
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    img = ds.load(0)
    assert img.dtype == np.uint8 and img.shape == (pins.PINS_SIDE, pins.PINS_SIDE, 3)
    assert (img == round(grey16 * 255 / 65535)).all(), (grey16, np.unique(img))


def test_an_8_bit_image_decodes_as_before(tmp_path):
    folder = _pins(tmp_path, people=1, each=1)
    rgb = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "pins_0" / "0.png")
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    want = np.array(Image.fromarray(rgb).resize((pins.PINS_SIDE, pins.PINS_SIDE), Image.BILINEAR))
    assert np.array_equal(ds.load(0), want)


def test_the_fingerprint_sees_an_added_photo_and_nothing_else(tmp_path):
    _pins(tmp_path)
    a = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    again = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    assert datasets.fingerprint(a) == datasets.fingerprint(again)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / FOLDER / "pins_2" / "new.png")
    b = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    assert datasets.fingerprint(a) != datasets.fingerprint(b)


def _pretrain(tmp_path, *extra):
    return run_inprocess([*PRETRAIN, "-data_root", tmp_path, "-out", tmp_path / "m.pth", *extra])


def _one_line_refusal(proc, *needles):
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, describe(proc)
    assert all(n in lines[0] for n in needles), describe(proc)


@pytest.mark.slow
def test_resume_refuses_photos_added_since_the_stop(tmp_path):
    _pins(tmp_path)
    first = _pretrain(tmp_path)
    assert first.returncode == 0, describe(first)
    state = tmp_path / "m-resume.pth"
    assert torch.load(state, weights_only=True)["data"]["train"] == 15
    for i in range(5, 10):  # five more photos of one person: more steps per epoch, another split
        Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / FOLDER / "pins_0" / f"{i}.png")
    _one_line_refusal(_pretrain(tmp_path, "-resume", state), "15 training", "20 training")


@pytest.mark.slow
def test_resume_refuses_another_recipe(tmp_path):
    """Stopped under the reference recipe (trained on the whole folder), a Pins run resumed under
    the corrected one would evaluate on images it trained on."""
    _pins(tmp_path)
    first = _pretrain(tmp_path, "-recipe", "reference")
    assert first.returncode == 0, describe(first)
    state = tmp_path / "m-resume.pth"
    _one_line_refusal(_pretrain(tmp_path, "-recipe", "corrected", "-resume", state),
                      "-recipe reference (now corrected)", "-pins_split none (now per_person)")
    _one_line_refusal(_pretrain(tmp_path, "-pins_split", "per_person", "-resume", state),
                      "-pins_split none (now per_person)")
    same = _pretrain(tmp_path, "-recipe", "reference", "-resume", state)
    assert same.returncode == 0 and "nothing to do" in same.stdout, describe(same)


def _pins_of_sizes(root, counts, size=(20, 16)):
    folder = root / "105_classes_pins_dataset"
    rng = np.random.default_rng(0)
    for person, n in counts.items():
        (folder / person).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / person / f"{i}.jpg")
    return folder


@pytest.mark.parametrize("counts, expect", [
    ({"pins_A": 1}, "pins_A has a single image"),
    ({"pins_A": 10, "pins_B": 1, "pins_C": 10}, "pins_B has a single image"),
    ({"pins_A": 1, "pins_B": 1}, "single image"),
    ({f"pins_{i}": 2 for i in range(5)}, "10 images of 5 people"),
    ({"pins_A": 2, "pins_B": 2}, "4 images of 2 people"),
])
def test_pins_too_small_to_split_is_one_line(tmp_path, counts, expect):
    folder = _pins_of_sizes(tmp_path, counts)
    for train in (True, False):
        with pytest.raises(UserError) as e:
            datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=train)
        assert expect in str(e.value) and str(folder) in str(e.value), str(e.value)


def test_pins_smallest_splittable_folder_loads(tmp_path):
    """The size the message asks for is enough (scikit-learn agrees)."""
    _pins_of_sizes(tmp_path, {"pins_A": 2, "pins_B": 2})
    with pytest.raises(UserError, match=r"needs at least (\d+) images") as e:
        datasets.load_dataset("PinsFaceRecognition", str(tmp_path))
    need = int(str(e.value).rsplit("at least ", 1)[1].split()[0])
    _pins_of_sizes(tmp_path, {"pins_A": need - need // 2, "pins_B": need // 2})
    train = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True)
    test = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=False)
    assert set(train.targets) == set(test.targets) == {0, 1}


UNREADABLE = {
    "text named .jpg": b"not an image at all\n",
    "empty .png": b"",
    "random bytes .jpeg": bytes((i * 31 + 7) % 256 for i in range(2000)),
    "html named .webp": b"<html><body>404</body></html>",
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_pins_file_that_is_not_an_image_is_named(tmp_path, case):
    folder = _pins_of_sizes(tmp_path, {"pins_A": 10, "pins_B": 10})
    bad = folder / "pins_B" / ("bad" + os.path.splitext(case)[1])
    bad.write_bytes(UNREADABLE[case])
    with pytest.raises(UserError) as e:
        datasets.load_dataset("PinsFaceRecognition", str(tmp_path))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def _truncated_pins(tmp_path):
    folder = _pins_of_sizes(tmp_path, {"pins_A": 10, "pins_B": 10}, size=(64, 64))
    for i in range(10):  # cut every image of pins_B: the header is read, the pixels are not there
        p = folder / "pins_B" / f"{i}.jpg"
        data = p.read_bytes()
        p.write_bytes(data[:len(data) * 2 // 3])
    return folder


def test_pins_truncated_image_is_named_when_decoded(tmp_path):
    folder = _truncated_pins(tmp_path)
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True)
    bad = next(i for i, p in enumerate(ds.paths) if "pins_B" in p)
    with pytest.raises(UserError) as e:
        ds[bad]
    assert "cannot decode image" in str(e.value) and ds.paths[bad] in str(e.value)
    assert str(folder) in str(e.value)


def test_pins_truncated_image_in_a_loader_worker_is_one_line(tmp_path):
    """A UserError raised in a DataLoader worker comes back with the worker's traceback in its
    message; cli's one_line keeps the original message."""
    _truncated_pins(tmp_path)
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    with pytest.raises(UserError) as e:
        list(loader)
    assert "Traceback" in str(e.value)  # what cli receives
    line = one_line(e.value)
    assert line.startswith("cannot decode image ") and "pins_B" in line and "\n" not in line, line
    # the traceback's frames hold the loader's iterator in a cycle with the exception: cleared, the
    # iterator goes now and tells its worker to stop; left to a later garbage collection, its
    # shutdown waits 5 s on the worker, inside whichever test runs then
    traceback.clear_frames(e.tb)
