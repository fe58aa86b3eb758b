"""The Pins face data set: an ImageFolder of one sub-folder per person, decoded from its files on
access, and its 80/20 split per person."""
import math
import os

import numpy as np

from cli import UserError
from images import ArrayImages

PINS_SIDE = 36  # Pins photos are first resized to 36×36, then cropped or resized to the net's input


class FileImages(ArrayImages):
    """Images decoded from files on access (Pins: ~17k photos of varying size)."""

    def __init__(self, paths, targets, transform=None, classes=None, side=PINS_SIDE):
        super().__init__(None, targets, None, transform, classes)
        self.paths = list(paths)
        self.side = side

    def load(self, i):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[i]) as im:
                return np.array(_rgb8(im).resize((self.side, self.side), Image.BILINEAR))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # a truncated or corrupt file passes the header check and fails only here
            raise UserError(f"cannot decode image {self.paths[i]}: {type(e).__name__}: {_first_line(e)}") from None


def _rgb8(im):
    """``im`` as 8-bit RGB. A 16-bit greyscale image (modes I;16*, and I, as which Pillow reads
    16-bit PNGs) is scaled from 0..65535 to 0..255: Pillow's own conversion clips it at 255,
    which turns almost every pixel white."""
    from PIL import Image

    if im.mode == "I" or im.mode.startswith("I;16"):
        wide = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(wide * (255 / 65535)), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def _visible(entries):
    """Entries not hidden by a leading dot (``.ipynb_checkpoints``, ``.DS_Store``, macOS's ``._*``):
    a hidden folder taken for a person would shift every later person's label."""
    return [e for e in entries if not e.name.startswith(".")]


def pins_files(root):
    """(paths, labels, class names) of the Pins ImageFolder: one person per sub-folder, hidden
    entries and files that are not images by their extension ignored. Every image file's header is
    opened here (cheap: no pixel is decoded), so a file that is not an image is named at once,
    not by a DataLoader halfway through a run."""
    from PIL import Image, UnidentifiedImageError

    folder = os.path.join(root, "105_classes_pins_dataset")
    if not os.path.isdir(folder):
        raise UserError(f"Pins data not found: expected an ImageFolder at {folder} (one sub-folder per person)")
    classes = sorted(e.name for e in _visible(os.scandir(folder)) if e.is_dir())
    paths, labels = [], []
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    for c, name in enumerate(classes):
        sub = os.path.join(folder, name)
        files = sorted(e.name for e in _visible(os.scandir(sub)) if e.name.lower().endswith(exts) and e.is_file())
        paths += [os.path.join(sub, f) for f in files]
        labels += [c] * len(files)
    if not paths:
        raise UserError(f"Pins data not found: no images under {folder}")
    for p in paths:
        try:
            with Image.open(p):
                pass
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UserError(f"cannot read Pins image {p}: {type(e).__name__}: {_first_line(e)}") from None
    return np.array(paths), np.array(labels), classes


def _first_line(e):
    return str(e).splitlines()[0] if str(e) else ""


def load_pins(root, train):
    """Pins has no official split: 80/20 per class with a fixed seed. Every person needs at
    least two images, and there must be at least as many test (and train) images as people,
    for the split to put each person on both sides."""
    from sklearn.model_selection import train_test_split

    paths, labels, classes = pins_files(root)
    folder = os.path.join(root, "105_classes_pins_dataset")
    counts = np.bincount(labels, minlength=len(classes))
    single = [classes[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise UserError(f"Pins person folder {os.path.join(folder, single[0])} has a single image "
                        f"({len(single)} such folder(s)): the 80/20 split per person needs at least 2 each")
    people, n = int((counts > 0).sum()), len(labels)

    def both_sides(n):  # scikit-learn's own test-size arithmetic
        n_test = math.ceil(0.2 * n)
        return min(n_test, n - n_test) >= people

    if not both_sides(n):
        need = next(m for m in range(n, 10 * people + 10) if both_sides(m))
        raise UserError(f"Pins data at {folder} has {n} images of {people} people: an 80/20 split with every "
                        f"person on both sides needs at least {need} images")
    try:
        itr, ite = train_test_split(np.arange(n), test_size=0.2, random_state=0, stratify=labels)
    except ValueError as e:
        raise UserError(f"cannot split the Pins data at {folder}: {_first_line(e)}") from None
    idx = itr if train else ite
    return paths[idx], labels[idx], classes
