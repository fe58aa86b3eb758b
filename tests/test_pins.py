"""The Pins folder as the loader sees it (hidden entries, 16-bit images), and a Pins pretraining
that refuses to resume on other data or under another recipe."""
import numpy as np
import pytest
import torch
from helpers import describe, run_inprocess
from PIL import Image

import datasets
import pins

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
