"""The device path, which the CPU suite cannot see: a tensor left on the CPU, noise drawn on the
wrong device, bf16 autocast (the planted evaluation wiring on CUDA is in test_evaluation_wiring.py). Tests marked gpu run on one CUDA GPU (about a minute in all;
gpu_check.sh runs them) and are skipped without one. Where the same comparison means something
on the CPU it runs there too, device "cpu", in the normal suite."""
import copy
import json
import math

import pytest
import torch
from helpers import Triples, run_inprocess
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

import experiment
import models
from Lipschitz import jit_unlearn
from methods import METHODS
from methods.importance import _cross_entropy, fisher_diagonal, importance

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)

# ops that carry a model's work: one of them on the CPU in a CUDA run means a model or a batch
# was left there (or moved back)
HEAVY = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm"}
RANDOM = {"randn", "randn_like", "normal", "normal_", "rand", "rand_like", "uniform_", "bernoulli_"}


class DeviceWatch(TorchDispatchMode):
    """Records, while active, every heavy op whose tensors are not all on ``device``'s type
    (``off``), the device type of every random draw (``random``) and the input dtypes of every
    convolution (``conv_dtypes``)."""

    def __init__(self, device):
        super().__init__()
        self.device, self.off, self.random, self.conv_dtypes = torch.device(device), [], set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in HEAVY:
            tensors = [t for t in (*args, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)]
            if any(t.device.type != self.device.type for t in tensors):
                self.off.append(f"{name} on {', '.join(sorted({str(t.device) for t in tensors}))}")
            if name == "convolution":
                self.conv_dtypes.add(args[0].dtype)
        elif name in RANDOM and isinstance(out, torch.Tensor):
            self.random.add(out.device.type)
        return out


def test_the_device_watch_sees_a_convolution_off_the_device():
    conv = torch.nn.Conv2d(3, 4, 3)
    with DeviceWatch("cuda") as off, DeviceWatch("cpu") as on:
        conv(torch.randn(2, 3, 8, 8)).sum().backward()
    assert off.off and off.off[0].startswith("convolution on cpu") and not on.off
    assert on.random == {"cpu"} and on.conv_dtypes == {torch.float32}


def _no_tf32():
    """fp32 on both sides: TF32 convolutions on the GPU would differ from the CPU by ~1e-3."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


@pytest.fixture
def fp32_matmul():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _forget_loader(n=48, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(Triples(x, y), batch_size=batch)


def _net(seed=0):
    torch.manual_seed(seed)
    return models.SmallCNN(10)


# ---- JiT ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_jit_on_the_device_with_the_cpus_noise_makes_the_cpus_update(device, fp32_matmul):
    """The same weights and the same noise (cpu_noise draws it from the CPU's generator, as the
    CPU run does) give the same update on the device as on the CPU; on the CPU this is the
    promise that cpu_noise changes nothing there."""
    net, loader = _net(), _forget_loader()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    on_cpu = copy.deepcopy(net)
    torch.manual_seed(1)
    jit_unlearn(on_cpu, loader, 0.5, 0.05, 4, progress=False, mode="eval")
    on_dev = copy.deepcopy(net).to(device)
    torch.manual_seed(1)
    with _no_tf32():
        jit_unlearn(on_dev, loader, 0.5, 0.05, 4, device=torch.device(device), progress=False, mode="eval",
                    cpu_noise=True)
    for name, p in on_dev.named_parameters():
        assert p.device.type == device
        want = dict(on_cpu.named_parameters())[name].detach() - start[name]
        assert want.abs().max() > 0, f"{name}: JiT changed nothing"
        torch.testing.assert_close(p.detach().cpu() - start[name], want, rtol=1e-3,
                                   atol=1e-4 * float(want.abs().max()), msg=name)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_jit_draws_its_noise_and_runs_its_forwards_on_the_device(device):
    net, loader = _net().to(device), _forget_loader()
    with DeviceWatch(device) as watch:
        jit_unlearn(net, loader, 0.5, 0.05, 4, device=torch.device(device), progress=False, mode="eval")
    assert watch.random == {device} and not watch.off


# ---- Fisher and SSD importance ------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_ssd_importance_and_the_fisher_diagonal_on_the_device_equal_the_cpus(device, fp32_matmul):
    net, loader = _net().eval(), _forget_loader(n=20, batch=8)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    dev = torch.device(device)
    with _no_tf32(), DeviceWatch(device) as watch:
        ssd_dev = importance(copy.deepcopy(net).to(dev), loader, _cross_entropy, torch.square, dev, "ssd")
        fisher_dev = fisher_diagonal(copy.deepcopy(net).to(dev), loader, 10, dev)
    assert not watch.off
    ssd_cpu = importance(net, loader, _cross_entropy, torch.square, torch.device("cpu"), "ssd")
    fisher_cpu = fisher_diagonal(net, loader, 10, torch.device("cpu"))
    for name, got, want in zip(names, ssd_dev, ssd_cpu):
        assert got.device.type == device and want.abs().max() > 0
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-5 * float(want.abs().max()), msg=name)
    for name in names:
        got, want = fisher_dev[name], fisher_cpu[name]
        assert got.device.type == device and want.abs().max() > 0
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-5 * float(want.abs().max()), msg=name)


# ---- the mains ----------------------------------------------------------------------------------

MAIN = ["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
        "-forget_class", "3", "-seed", "0", "-workers", "0"]


def _finite_record(results):
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert not record["diverged"], record.get("diverged_reason")
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    assert not bad, f"non-finite fields {bad}"
    return record


@pytest.fixture(scope="module")
def cuda_weights(tmp_path_factory):
    """The quickstart's SmallCNN, pretrained on Digits on the GPU for two epochs."""
    path = tmp_path_factory.mktemp("cuda") / "smallcnn.pth"
    proc = run_inprocess(["pretrain_model.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-epochs", "2", "-gpu", "-workers", "0", "-out", path])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(path)


@pytest.mark.gpu
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_cuda_with_model_batches_and_noise_on_the_gpu(method, cuda_weights, tmp_path,
                                                                          monkeypatch):
    models_seen = []

    def evaluate_split(model, *args, **kwargs):  # the model each method hands back
        models_seen.append({p.device.type for p in model.parameters()})
        return evaluate(model, *args, **kwargs)

    evaluate = experiment.evaluate_split
    monkeypatch.setattr(experiment, "evaluate_split", evaluate_split)
    results = tmp_path / "r.jsonl"
    with DeviceWatch("cuda") as watch:
        proc = run_inprocess([*MAIN, "-method", method, "-weight_path", cuda_weights, "-gpu", "-results", results,
                              "-retrain_dir", tmp_path / "retrained"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _finite_record(results)
    assert record["device"] != "cpu" and models_seen == [{"cuda"}]
    assert not watch.off, f"{method}: model work on the CPU: {sorted(set(watch.off))}"


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow), CUDA])
def test_amp_runs_the_forwards_in_bf16_and_without_it_in_fp32(device, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(_net().state_dict(), weights)
    for amp, dtype in ((["-amp"], torch.bfloat16), ([], torch.float32)):
        results = tmp_path / f"r{len(amp)}.jsonl"
        gpu = ["-gpu"] if device == "cuda" else []
        with DeviceWatch(device) as watch:
            proc = run_inprocess([*MAIN, "-method", "lipschitz_forgetting", "-weight_path", weights, "-results",
                                  results, "-relearn_max_steps", "0", "-n_samples", "2", *gpu, *amp])
        assert proc.returncode == 0, proc.stderr[-3000:]
        _finite_record(results)
        assert watch.conv_dtypes == {dtype} and not watch.off
