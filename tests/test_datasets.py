"""Data sets and splits (datasets.py) on tiny generated CIFAR files and on Digits."""
import re

import numpy as np
import pytest
import torch
from helpers import CIFAR100_COARSE, run_inprocess
from PIL import Image
from torchvision import transforms

import batching
import datasets
import images
import models
from cli import UserError

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _cifar10_arrays(arrays, train):
    names = CIFAR10_TRAIN if train else ["test_batch"]
    data = np.concatenate([arrays["cifar10"][n][0] for n in names])
    labels = np.concatenate([arrays["cifar10"][n][1] for n in names])
    return data, labels


def _expected_pixel(row, c, h, w):
    """Normalised value of channel c, pixel (h, w) of a CIFAR row (CHW row-major)."""
    return (row[c * 1024 + h * 32 + w] / 255.0 - images.MEAN[c]) / images.STD[c]


@pytest.mark.parametrize("name,train,n", [
    ("Cifar10", True, 50), ("Cifar10", False, 10),
    ("Cifar100", True, 200), ("Cifar100", False, 100),
    ("Cifar20", True, 200), ("Cifar20", False, 100),
])
def test_cifar_lengths(cifar, name, train, n):
    root, _ = cifar
    assert len(datasets.load_dataset(name, str(root), train=train, size=32)) == n


def test_cifar10_triple_and_labels(cifar):
    root, arrays = cifar
    ds = datasets.load_dataset("Cifar10", str(root), train=True, size=32)
    _, labels = _cifar10_arrays(arrays, True)
    for i in (0, 13, 49):  # across batch files: batch order data_batch_1..5
        x, middle, y = ds[i]
        assert isinstance(middle, torch.Tensor) and middle.numel() == 0
        assert y == labels[i]
        assert tuple(x.shape) == (3, 32, 32)


def test_cifar10_test_split_labels(cifar):
    root, arrays = cifar
    ds = datasets.load_dataset("Cifar10", str(root), train=False, size=32)
    _, labels = _cifar10_arrays(arrays, False)
    assert [ds[i][2] for i in range(len(ds))] == labels.tolist()


def test_cifar100_triple_uses_fine_label(cifar):
    root, arrays = cifar
    ds = datasets.load_dataset("Cifar100", str(root), train=True, size=32)
    _, fine, _ = arrays["cifar100"]["train"]
    for i in (0, 57, 199):
        _, middle, y = ds[i]
        assert isinstance(middle, torch.Tensor) and middle.numel() == 0
        assert y == fine[i]
    assert ds.targets.tolist() == fine.tolist()


def test_cifar20_triple_fine_in_middle_coarse_as_model_label(cifar):
    root, arrays = cifar
    ds = datasets.load_dataset("Cifar20", str(root), train=False, size=32)
    _, fine, coarse = arrays["cifar100"]["test"]
    got = [(int(ds[i][1]), ds[i][2]) for i in range(len(ds))]
    assert got == list(zip(fine.tolist(), coarse.tolist()))
    assert all(c == CIFAR100_COARSE[f] for f, c in got)


@pytest.mark.parametrize("name", ["Cifar10", "Cifar100", "Cifar20"])
def test_pixel_values_are_normalised_chw(cifar, name):
    root, arrays = cifar
    ds = datasets.load_dataset(name, str(root), train=True, size=32)
    if name == "Cifar10":
        data, _ = _cifar10_arrays(arrays, True)
    else:
        data = arrays["cifar100"]["train"][0]
    i = 17
    x = ds[i][0]
    assert x.dtype == torch.float32
    for c, h, w in [(0, 0, 0), (1, 5, 30), (2, 31, 1), (0, 7, 19)]:
        assert x[c, h, w].item() == pytest.approx(_expected_pixel(data[i], c, h, w), abs=1e-5)
    # the whole image, channel by channel
    want = (torch.from_numpy(data[i].reshape(3, 32, 32).astype(np.float32)) / 255
            - torch.tensor(images.MEAN).view(3, 1, 1)) / torch.tensor(images.STD).view(3, 1, 1)
    torch.testing.assert_close(x, want, atol=1e-5, rtol=0)


def test_size_224_gives_vit_input(cifar):
    root, _ = cifar
    ds = datasets.load_dataset("Cifar100", str(root), train=False, size=224)
    assert tuple(ds[3][0].shape) == (3, 224, 224)


@pytest.mark.parametrize("size,atol", [(32, 1e-5), (64, 1e-4), (224, 1e-4)])
def test_image_transform_matches_torchvision(size, atol):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    reference = transforms.Compose([
        transforms.ToTensor(), transforms.Normalize(images.MEAN, images.STD), transforms.Resize(size),
    ])(Image.fromarray(img))
    got = images.ImageTransform(size)(img)
    assert got.shape == reference.shape == (3, size, size)
    torch.testing.assert_close(got, reference, atol=atol, rtol=0)


def test_missing_cifar100_folder_names_folder_and_files(tmp_path):
    with pytest.raises(UserError) as e:
        datasets.load_dataset("Cifar100", str(tmp_path), train=True)
    msg = str(e.value)
    folder = str(tmp_path / "cifar-100-python")
    assert folder in msg
    rest = msg.replace(folder, "")  # the tmp path itself contains 'test'
    assert re.search(r"\btrain\b", rest) and re.search(r"\btest\b", rest), msg


def test_missing_cifar10_folder_names_folder_and_files(tmp_path):
    with pytest.raises(UserError) as e:
        datasets.load_dataset("Cifar10", str(tmp_path), train=False)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    for f in CIFAR10_TRAIN + ["test_batch"]:
        assert f in msg


def _labels(ds, fine=False):
    return [int(ds[i][1]) if fine else int(ds[i][2]) for i in range(len(ds))]


@pytest.mark.parametrize("name,cls", [("Cifar100", 69), ("Cifar20", 19), ("Cifar10", 3)])
def test_split_full_class(cifar, name, cls):
    root, _ = cifar
    train = datasets.load_dataset(name, str(root), train=True)
    test = datasets.load_dataset(name, str(root), train=False)
    ytr, yte = _labels(train), _labels(test)

    forget_train = [i for i in range(len(ytr)) if ytr[i] == cls]
    retain_train = [i for i in range(len(ytr)) if ytr[i] != cls]
    forget_valid = [i for i in range(len(yte)) if yte[i] == cls]
    retain_valid = []  # per-class lists concatenated in class order, as the reference does
    for c in sorted(set(yte)):
        if c != cls:
            retain_valid += [i for i in range(len(yte)) if yte[i] == c]

    split = datasets.split_full_class(train, test, cls)
    assert set(split) == {"forget_train", "retain_train", "forget_valid", "retain_valid"}
    assert forget_train, "the generated data must hold the class"
    assert split["forget_train"][0] == "train" and list(split["forget_train"][1]) == forget_train
    assert split["retain_train"][0] == "train" and list(split["retain_train"][1]) == retain_train
    assert split["forget_valid"][0] == "test" and list(split["forget_valid"][1]) == forget_valid
    assert split["retain_valid"][0] == "test" and list(split["retain_valid"][1]) == retain_valid


@pytest.mark.parametrize("fine_cls", [69, 51, 2, 40, 71])
def test_split_sub_class_uses_fine_labels(cifar, fine_cls):
    root, _ = cifar
    train = datasets.load_dataset("Cifar20", str(root), train=True)
    test = datasets.load_dataset("Cifar20", str(root), train=False)
    ftr, fte = _labels(train, fine=True), _labels(test, fine=True)

    split = datasets.split_sub_class(train, test, fine_cls)
    expect = {
        "forget_train": ("train", [i for i in range(len(ftr)) if ftr[i] == fine_cls]),
        "retain_train": ("train", [i for i in range(len(ftr)) if ftr[i] != fine_cls]),
        "forget_valid": ("test", [i for i in range(len(fte)) if fte[i] == fine_cls]),
        # the reference's order: the retained test images of fine class 0, then of 1, ...
        "retain_valid": ("test", [i for c in range(100) if c != fine_cls for i in range(len(fte)) if fte[i] == c]),
    }
    assert {k: (s, list(idx)) for k, (s, idx) in split.items()} == expect
    ungrouped = datasets.split_sub_class(train, test, fine_cls, grouped=False)
    assert list(ungrouped["retain_valid"][1]) == [i for i in range(len(fte)) if fte[i] != fine_cls]
    # the retain set still holds other members of the same super-class
    coarse = CIFAR100_COARSE[fine_cls]
    assert any(train.targets[i] == coarse for i in split["retain_train"][1])


def test_split_sub_class_without_fine_labels_is_user_error(cifar):
    root, _ = cifar
    train = datasets.load_dataset("Cifar100", str(root), train=True)
    test = datasets.load_dataset("Cifar100", str(root), train=False)
    with pytest.raises(UserError):
        datasets.split_sub_class(train, test, 69)


@pytest.fixture(scope="module")
def cifar10_sets(cifar):
    root, _ = cifar
    return (datasets.load_dataset("Cifar10", str(root), train=True),
            datasets.load_dataset("Cifar10", str(root), train=False))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_split_random_sizes_and_partition(cifar10_sets):
    train, test = cifar10_sets
    split = datasets.split_random(train, test, 0.2, _gen(0))
    src_f, forget = split["forget_train"]
    src_r, retain = split["retain_train"]
    assert (src_f, src_r) == ("train", "train")
    assert len(forget) == int(len(train) * 0.2) == 10
    assert not set(forget.tolist()) & set(retain.tolist())
    assert sorted(forget.tolist() + retain.tolist()) == list(range(len(train)))


def test_split_random_validation_sets(cifar10_sets):
    train, test = cifar10_sets
    split = datasets.split_random(train, test, 0.2, _gen(0))
    assert split["forget_valid"][0] == "train"
    assert list(split["forget_valid"][1]) == list(split["forget_train"][1])
    assert split["retain_valid"][0] == "test"
    assert list(split["retain_valid"][1]) == list(range(len(test)))


@pytest.mark.parametrize("n, perc, size", [(50, 0.07, 4), (50, 0.001, 1), (50000, 0.00165, 83), (1437, 0.1, 144)])
def test_split_random_size_is_random_splits(n, perc, size):
    """random_split with fractions: floor(n·p), plus the image rounding leaves over (83 of
    CIFAR-10's 50,000 at the reference's 0.00165, not 82)."""
    train = images.ArrayImages(np.zeros((n, 1, 1, 3), np.uint8), np.zeros(n))
    assert len(datasets.split_random(train, train, perc, _gen(0))["forget_train"][1]) == size


def test_split_random_deterministic_per_seed(cifar10_sets):
    train, test = cifar10_sets
    a = datasets.split_random(train, test, 0.2, _gen(0))["forget_train"][1]
    b = datasets.split_random(train, test, 0.2, _gen(0))["forget_train"][1]
    c = datasets.split_random(train, test, 0.2, _gen(1))["forget_train"][1]
    assert list(a) == list(b)
    assert set(a.tolist()) != set(c.tolist())


@pytest.mark.parametrize("dataset,target,subclass,want", [
    ("Cifar100", "rocket", False, 69),
    ("Cifar100", "mushroom", False, 51),
    ("Cifar100", "baby", False, 2),
    ("Cifar100", "lamp", False, 40),
    ("Cifar100", "sea", False, 71),
    ("Cifar20", "vehicle2", False, 19),
    ("Cifar20", "veg", False, 4),
    ("Cifar20", "people", False, 14),
    ("Cifar20", "electrical_devices", False, 5),
    ("Cifar20", "natural_scenes", False, 10),
    ("Cifar20", "rocket", True, 69),
    ("Cifar20", "sea", True, 71),
    ("Cifar100", "7", False, 7),
    ("Cifar100", "99", False, 99),
    ("Cifar20", "19", False, 19),
    ("Cifar20", "99", True, 99),
    ("Cifar10", "0", False, 0),
    ("Digits", "3", False, 3),
    ("Digits5", "9", True, 9),
])
def test_forget_target_id(dataset, target, subclass, want):
    assert datasets.forget_target_id(dataset, target, subclass=subclass) == want


@pytest.mark.parametrize("dataset,target,subclass", [
    ("Cifar100", "vehicle2", False),   # a super-class name on the 100-way set
    ("Cifar20", "rocket", False),      # a fine name is not a CIFAR-20 class
    ("Cifar20", "vehicle2", True),     # sub-class wants fine names
    ("Cifar100", "100", False),
    ("Cifar20", "20", False),
    ("Cifar20", "100", True),
    ("Cifar10", "10", False),
    ("Cifar10", "-1", False),
    ("Cifar10", "3.0", False),
    ("Digits", "rocket", False),
    ("Digits", "10", False),
    ("Digits5", "10", True),
    ("Cifar100", "rocket", True),      # no fine labels for sub-class forgetting
])
def test_forget_target_id_rejects(dataset, target, subclass):
    with pytest.raises(UserError):
        datasets.forget_target_id(dataset, target, subclass=subclass)


@pytest.fixture(scope="module")
def digits():
    return (datasets.load_dataset("Digits", train=True), datasets.load_dataset("Digits", train=False))


def test_digits_sizes_and_classes(digits):
    train, test = digits
    assert len(train) + len(test) == 1797
    assert len(train) == 1437
    assert sorted(set(train.targets.tolist())) == list(range(10))
    assert sorted(set(test.targets.tolist())) == list(range(10))


def test_digits_split_is_stable_across_calls(digits):
    train, test = digits
    train2 = datasets.load_dataset("Digits", train=True)
    test2 = datasets.load_dataset("Digits", train=False)
    assert np.array_equal(train.targets, train2.targets)
    assert np.array_equal(test.targets, test2.targets)
    assert np.array_equal(train.images, train2.images)
    assert np.array_equal(test.images, test2.images)


def test_digits_train_and_test_are_disjoint(digits):
    train, test = digits
    a = {bytes(im) for im in train.images}
    b = {bytes(im) for im in test.images}
    # a handful of identical digit images may exist in the raw data; most must differ
    assert len(a & b) < 10


def test_digits_triple_shape(digits):
    train, _ = digits
    x, middle, y = train[0]
    assert tuple(x.shape) == (3, 32, 32)
    assert middle.numel() == 0
    assert 0 <= y < 10


def test_digits5_model_label_is_digit_pair(digits):
    train, _ = digits
    d5 = datasets.load_dataset("Digits5", train=True)
    assert np.array_equal(d5.fine, train.targets)
    assert np.array_equal(d5.targets, train.targets // 2)
    _, fine, y = d5[5]
    assert fine == train.targets[5] and y == train.targets[5] // 2


def test_pins_imagefolder_loads_and_splits_per_person(tmp_path):
    folder = tmp_path / "105_classes_pins_dataset"
    rng = np.random.default_rng(0)
    for person in ("pins_A", "pins_B", "pins_C"):
        (folder / person).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (40 + i, 30, 3), dtype=np.uint8)).save(folder / person / f"{i}.jpg")
    (folder / "pins_A" / "notes.txt").write_text("not an image")
    train = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, size=32)
    test = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=False, size=32)
    assert len(train) + len(test) == 30 and len(test) == 6
    assert sorted(np.bincount(test.targets).tolist()) == [2, 2, 2]  # 80/20 within each person
    assert not set(train.paths) & set(test.paths)
    x, fine, y = train[0]
    assert x.shape == (3, 32, 32) and fine.numel() == 0 and y == train.targets[0]
    assert datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=False, size=32).paths == test.paths


def test_pins_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="105_classes_pins_dataset"):
        datasets.load_dataset("PinsFaceRecognition", str(tmp_path))


def _loader_batches(ds, batch):
    return list(torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False))


@pytest.mark.parametrize("name, size", [("Cifar10", 32), ("Cifar20", 32), ("Cifar100", 48), ("Cifar20", 224)])
def test_device_batches_equal_the_dataloader_exactly(cifar, name, size):
    root, _ = cifar
    full = datasets.load_dataset(name, str(root), train=True, size=size)
    inner = torch.utils.data.Subset(full, np.arange(len(full))[::-1][:37])  # reversed, then a subset of that
    for ds in (full, inner, torch.utils.data.Subset(inner, [5, 0, 36, 7, 7])):
        got = list(batching.device_batches(ds, 16, torch.device("cpu")))
        want = _loader_batches(ds, 16)
        assert len(got) == len(want) == len(batching.device_batches(ds, 16, torch.device("cpu")))
        for (x, f, y), (wx, wf, wy) in zip(got, want):
            assert x.shape == wx.shape and x.dtype == wx.dtype and torch.equal(x, wx)
            assert x.stride() == wx.stride()  # the same memory layout, hence the same conv kernels
            assert torch.equal(y, wy) and f.shape == wf.shape and torch.equal(f, wf)


def test_device_batches_give_the_same_logits(smallcnn_ckpt):
    import metrics
    from models import SmallCNN
    from utils import load_weights

    train = datasets.load_dataset("Digits", train=True)
    ds = torch.utils.data.Subset(train, np.flatnonzero(train.targets == 3))
    model = load_weights(SmallCNN(10), smallcnn_ckpt, "SmallCNN", 10)
    a = metrics.predict(model, torch.utils.data.DataLoader(ds, 512))
    b = metrics.predict(model, batching.device_batches(ds, 512, torch.device("cpu")))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_device_batches_fall_back_where_they_do_not_apply(cifar, tmp_path):
    root, _ = cifar
    augmented = datasets.load_dataset("Cifar10", str(root), train=True, augment=True)
    assert batching.device_batches(augmented, 8, torch.device("cpu")) is None
    (tmp_path / "105_classes_pins_dataset" / "pins_A").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "105_classes_pins_dataset" / "pins_A" / f"{i}.jpg")
    pins = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True)
    assert batching.device_batches(torch.utils.data.Subset(pins, [0, 1]), 8, torch.device("cpu")) is None


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "random.pth"
    torch.save(models.SmallCNN(10).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("perc", ["0.995", "0.9999"])
def test_a_random_split_leaving_too_few_retained_images_is_refused_with_its_sizes(perc, weights, tmp_path):
    proc = run_inprocess(["forget_random_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-forget_perc", perc, "-method", "finetune", "-weight_path", weights,
                          "-results", tmp_path / "r.jsonl"])
    assert proc.returncode == 2, proc.stderr
    assert "training image(s) to retain" in proc.stderr and "to forget" in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()
