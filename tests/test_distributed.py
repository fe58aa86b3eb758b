"""Pretraining that scales out and survives interruption: torchrun (gloo on the CPU) and -resume,
which repeats an uninterrupted run exactly."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, _env, describe, run_inprocess

import models
import pretrain_model
from launch import threads_per_slot
from records import read_records

PRETRAIN = ["pretrain_model.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-recipe", "corrected"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- torchrun ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchrun_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp.pth"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *PRETRAIN, "-epochs", "2", "-out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    return proc, out


def test_torchrun_pretrains_with_two_gloo_processes(torchrun_ckpt):
    proc, out = torchrun_ckpt
    assert proc.returncode == 0, describe(proc)
    # rank 0 alone prints: one line per epoch, not two
    assert "2 process(es) x 32 images per step (64 in all)" in proc.stdout
    assert proc.stdout.count("epoch 2/2") == 1, proc.stdout
    state = load(Path(str(out).replace(".pth", "-resume.pth")))
    assert state["world"] == 2 and state["epoch"] == 2
    # 1,437 training digits, 32 per process per step: ceil(719 / 32) = 23 steps per epoch
    assert state["onecycle"]["last_epoch"] == 2 * 23


def test_torchrun_checkpoint_loads_in_the_mains(torchrun_ckpt, tmp_path):
    proc, out = torchrun_ckpt
    assert proc.returncode == 0, describe(proc)
    state = load(out)
    assert set(state) == set(models.SmallCNN(10).state_dict())  # no "module." prefix from DDP
    results = tmp_path / "r.jsonl"
    run = run_inprocess(["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                         "-forget_class", "3", "-method", "baseline", "-weight_path", out, "-results", results,
                         "-relearn_max_steps", "0", "-retrain_dir", tmp_path])
    assert run.returncode == 0, describe(run)
    assert read_records(results)[0]["weight_path"] == str(out)


def _stop_after_first_epoch(cmd, how, threads=None):
    """Run ``cmd`` (a 2-epoch pretraining) with ``threads`` CPU threads (None: torch's default)
    and stop it with ``how`` ("kill": SIGKILL, or "terminate": SIGTERM, which torchrun passes
    on to its workers) once epoch 1 is printed."""
    env = _env() if threads is None else dict(_env(), OMP_NUM_THREADS=str(threads))
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in p.stdout:
            if line.startswith("epoch 1/2"):
                getattr(p, how)()
                break
        p.wait(60)
    finally:
        p.kill()


def test_torchrun_resume_after_a_stop_reproduces_the_uninterrupted_run(torchrun_ckpt, tmp_path):
    proc, whole_out = torchrun_ckpt
    assert proc.returncode == 0, describe(proc)
    out = tmp_path / "m.pth"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *PRETRAIN, "-epochs", "2", "-out", str(out)]
    _stop_after_first_epoch(cmd, "terminate")
    state_path = tmp_path / "m-resume.pth"
    assert load(state_path)["epoch"] == 1, "the job was not stopped inside epoch 2"
    resumed = subprocess.run(cmd + ["-resume", str(state_path)], cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, describe(resumed)
    assert "resuming after epoch 1/2" in resumed.stdout
    whole = load(Path(str(whole_out).replace(".pth", "-resume.pth")))["model"]
    again = load(state_path)["model"]
    for k in whole:
        assert torch.equal(whole[k], again[k]), k


@pytest.mark.slow  # a script in a subprocess, or VGG16 and a ViT built
def test_every_trainable_parameter_gets_a_gradient():
    """DistributedDataParallel refuses a parameter that asks for a gradient and gets none."""
    from transformers import ViTConfig

    tiny = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     image_size=32, patch_size=8)
    for name in models.MODELS:
        model = models.ViT(10, config=tiny) if name == "ViT" else models.build_model(name, 10)
        pretrain_model.freeze_unused(model)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (name, missing)
        assert name != "ViT" or not model.base.pooler.dense.weight.requires_grad


# ---- -resume -------------------------------------------------------------------------------

def test_resume_after_a_kill_reproduces_the_uninterrupted_run(smallcnn_ckpt, tmp_path):
    # smallcnn_ckpt comes from the same command run for 2 epochs without interruption, with
    # threads_per_slot(2) threads: both halves here use as many (the last bits depend on it)
    whole = load(smallcnn_ckpt.replace(".pth", "-resume.pth"))
    threads = threads_per_slot(2)
    out = tmp_path / "m.pth"
    _stop_after_first_epoch([sys.executable, *PRETRAIN, "-epochs", "2", "-out", str(out)], "kill", threads)
    state_path = tmp_path / "m-resume.pth"
    assert load(state_path)["epoch"] == 1, "the run was not stopped inside epoch 2"
    proc = run_inprocess([*PRETRAIN, "-epochs", "2", "-out", out, "-resume", state_path], threads)
    assert proc.returncode == 0, describe(proc)
    assert "resuming after epoch 1/2" in proc.stdout and "\nepoch 1/2 " not in proc.stdout
    resumed = load(state_path)
    assert resumed["epoch"] == 2 and resumed["best_acc"] == whole["best_acc"]
    for part in ("model", "optimizer"):
        a, b = whole[part], resumed[part]
        flat_a = a if part == "model" else {k: v["momentum_buffer"] for k, v in a["state"].items()}
        flat_b = b if part == "model" else {k: v["momentum_buffer"] for k, v in b["state"].items()}
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]), (part, k)
    for k, v in load(smallcnn_ckpt).items():
        assert torch.equal(v, load(out)[k]), k


def test_resume_refuses_what_it_cannot_continue(smallcnn_ckpt, tmp_path):
    state = smallcnn_ckpt.replace(".pth", "-resume.pth")
    cases = {
        "-lr 0.05": ([*PRETRAIN, "-epochs", "2", "-lr", "0.05", "-resume", state], "-lr 0.1 (now 0.05)"),
        "-epochs 3": ([*PRETRAIN, "-epochs", "3", "-resume", state], "-epochs 2 (now 3)"),
        "best checkpoint": ([*PRETRAIN, "-epochs", "2", "-resume", smallcnn_ckpt], "not a training state"),
        "missing": ([*PRETRAIN, "-resume", tmp_path / "nope.pth"], "resume state not found"),
    }
    for name, (cmd, message) in cases.items():
        proc = run_inprocess(cmd)
        assert proc.returncode == 2, (name, describe(proc))
        assert proc.stderr.startswith("error:") and message in proc.stderr and proc.stderr.count("\n") == 1, name


def test_resume_of_a_finished_run_trains_nothing(smallcnn_ckpt, tmp_path):
    state = tmp_path / "s.pth"
    state.write_bytes(Path(smallcnn_ckpt.replace(".pth", "-resume.pth")).read_bytes())
    before = load(state)
    proc = run_inprocess([*PRETRAIN, "-epochs", "2", "-resume", state])
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, describe(proc)
    assert torch.equal(load(state)["model"]["fc.weight"], before["model"]["fc.weight"])
