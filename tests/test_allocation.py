"""Sizes from the command line that no memory can hold (noise images, JiT's perturbations, gkt's
pseudo batch) are refused in one line naming the flag, never a traceback from the allocator."""
import pytest
import torch
from helpers import describe, run_inprocess

import utils
from cli import UserError

CPU = torch.device("cpu")
HUGE = str(10 ** 10)  # × a 3×32×32 image: about 100 TiB; refused by the allocator at once, never swapped


def test_a_tensor_larger_than_the_free_memory_is_refused_naming_the_flags():
    free = utils.available_memory(CPU)
    with pytest.raises(UserError) as e:
        utils.check_allocatable(free // 4 + 1, "-unsir_noise_size", CPU)
    msg = str(e.value)
    assert msg.startswith("-unsir_noise_size") and "GiB" in msg and "\n" not in msg
    utils.check_allocatable(free // 8, "-unsir_noise_size", CPU)  # half of it fits


@pytest.mark.parametrize("method, flags, named", [
    ("UNSIR", ["-unsir_noise_size", HUGE], "-unsir_noise_size"),
    ("emmn", ["-emmn_noise_size", HUGE], "-emmn_noise_size"),
    ("UNSIR", ["-noise_repeats", str(10 ** 14)], "-noise_repeats"),  # an epoch's shuffled order
    ("lipschitz_forgetting", ["-n_samples", HUGE], "-n_samples"),
    ("gkt", ["-gkt_batch", HUGE], "-gkt_batch"),
    ("gkt", ["-gkt_gen_width", HUGE], "-gkt_gen_width"),
])
def test_a_size_that_cannot_be_allocated_is_one_line_naming_the_flag(smallcnn_ckpt, tmp_path, method, flags, named):
    proc = run_inprocess(["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-forget_class", "3", "-method", method, "-weight_path", smallcnn_ckpt, *flags,
                          "-results", tmp_path / "r.jsonl", "-retrain_dir", tmp_path])
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, describe(proc)
    assert named in lines[0] and "GiB" in lines[0], describe(proc)
    assert not (tmp_path / "r.jsonl").exists()
