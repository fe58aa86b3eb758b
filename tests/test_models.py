"""State-dict layouts of the networks and checkpoint loading (utils.load_weights)."""
import os

import pytest
import torch

import cli
import models
import utils

# The reference "VGG16" (torchvision vgg11 + Linear(1000, classes)) state-dict layout, in order.
VGG16_KEYS = [
    "model.features.0.weight", "model.features.0.bias",
    "model.features.3.weight", "model.features.3.bias",
    "model.features.6.weight", "model.features.6.bias",
    "model.features.8.weight", "model.features.8.bias",
    "model.features.11.weight", "model.features.11.bias",
    "model.features.13.weight", "model.features.13.bias",
    "model.features.16.weight", "model.features.16.bias",
    "model.features.18.weight", "model.features.18.bias",
    "model.classifier.0.weight", "model.classifier.0.bias",
    "model.classifier.3.weight", "model.classifier.3.bias",
    "model.classifier.6.weight", "model.classifier.6.bias",
    "fc.weight", "fc.bias",
]


@pytest.fixture(scope="module")
def vgg100():
    # building VGG16 (~133M parameters) takes seconds on the CPU: share one instance
    return models.VGG16(num_classes=100)


def test_vgg16_state_dict_keys_are_the_reference_layout(vgg100):
    assert list(vgg100.state_dict().keys()) == VGG16_KEYS


# Shapes of the reference layout for 100 classes (same order as VGG16_KEYS).
VGG16_SHAPES = [
    (64, 3, 3, 3), (64,), (128, 64, 3, 3), (128,), (256, 128, 3, 3), (256,),
    (256, 256, 3, 3), (256,), (512, 256, 3, 3), (512,), (512, 512, 3, 3), (512,),
    (512, 512, 3, 3), (512,), (512, 512, 3, 3), (512,),
    (4096, 25088), (4096,), (4096, 4096), (4096,), (1000, 4096), (1000,),
    (100, 1000), (100,),
]


def test_vgg16_reference_checkpoint_loads_strictly(vgg100, tmp_path):
    g = torch.Generator().manual_seed(42)
    state = {k: torch.randn(shape, generator=g) for k, shape in zip(VGG16_KEYS, VGG16_SHAPES, strict=True)}
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    utils.load_weights(vgg100, str(path), "VGG16", 100)
    loaded = vgg100.state_dict()
    for k in VGG16_KEYS:
        assert torch.equal(loaded[k], state[k]), k


# ---------------------------------------------------------------- ViT

def tiny_vit_config():
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, image_size=32, patch_size=8)


def tiny_vit(seed, num_classes=10):
    torch.manual_seed(seed)
    return models.ViT(num_classes=num_classes, config=tiny_vit_config()).eval()


# transformers-4 names (released checkpoints) -> the names this model instance uses.
VIT_V4_TO_CURRENT = {
    "base.embeddings.cls_token": "base.embeddings.cls_token",
    "base.embeddings.position_embeddings": "base.embeddings.position_embeddings",
    "base.embeddings.patch_embeddings.projection.weight": "base.embeddings.patch_embeddings.projection.weight",
    "base.embeddings.patch_embeddings.projection.bias": "base.embeddings.patch_embeddings.projection.bias",
}
for _i in range(2):
    VIT_V4_TO_CURRENT.update({
        f"base.encoder.layer.{_i}.attention.attention.query.weight": f"base.layers.{_i}.attention.q_proj.weight",
        f"base.encoder.layer.{_i}.attention.attention.query.bias": f"base.layers.{_i}.attention.q_proj.bias",
        f"base.encoder.layer.{_i}.attention.attention.key.weight": f"base.layers.{_i}.attention.k_proj.weight",
        f"base.encoder.layer.{_i}.attention.attention.key.bias": f"base.layers.{_i}.attention.k_proj.bias",
        f"base.encoder.layer.{_i}.attention.attention.value.weight": f"base.layers.{_i}.attention.v_proj.weight",
        f"base.encoder.layer.{_i}.attention.attention.value.bias": f"base.layers.{_i}.attention.v_proj.bias",
        f"base.encoder.layer.{_i}.attention.output.dense.weight": f"base.layers.{_i}.attention.o_proj.weight",
        f"base.encoder.layer.{_i}.attention.output.dense.bias": f"base.layers.{_i}.attention.o_proj.bias",
        f"base.encoder.layer.{_i}.intermediate.dense.weight": f"base.layers.{_i}.mlp.fc1.weight",
        f"base.encoder.layer.{_i}.intermediate.dense.bias": f"base.layers.{_i}.mlp.fc1.bias",
        f"base.encoder.layer.{_i}.output.dense.weight": f"base.layers.{_i}.mlp.fc2.weight",
        f"base.encoder.layer.{_i}.output.dense.bias": f"base.layers.{_i}.mlp.fc2.bias",
        f"base.encoder.layer.{_i}.layernorm_before.weight": f"base.layers.{_i}.layernorm_before.weight",
        f"base.encoder.layer.{_i}.layernorm_before.bias": f"base.layers.{_i}.layernorm_before.bias",
        f"base.encoder.layer.{_i}.layernorm_after.weight": f"base.layers.{_i}.layernorm_after.weight",
        f"base.encoder.layer.{_i}.layernorm_after.bias": f"base.layers.{_i}.layernorm_after.bias",
    })
VIT_V4_TO_CURRENT.update({
    "base.layernorm.weight": "base.layernorm.weight",
    "base.layernorm.bias": "base.layernorm.bias",
    "base.pooler.dense.weight": "base.pooler.dense.weight",
    "base.pooler.dense.bias": "base.pooler.dense.bias",
    "final.weight": "final.weight",
    "final.bias": "final.bias",
})


def test_vit_keys_are_base_or_final():
    keys = list(tiny_vit(0).state_dict())
    assert keys and all(k.startswith(("base.", "final.")) for k in keys)
    assert {k.split(".")[0] for k in keys} == {"base", "final"}


def test_vit_forward_shape():
    out = tiny_vit(0)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_vit_old_transformers4_checkpoint_loads_and_reproduces_outputs(tmp_path):
    source, target = tiny_vit(0), tiny_vit(1)
    src = source.state_dict()
    assert set(VIT_V4_TO_CURRENT.values()) == set(src)  # the literal table covers the model
    old_state = {old: src[new].clone() for old, new in VIT_V4_TO_CURRENT.items()}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = source(x)
        assert not torch.allclose(target(x), expected)  # different init: non-vacuous
    target.load_state_dict(old_state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(target(x), expected)


def test_vit_old_layout_checkpoint_loads_through_load_weights(tmp_path):
    source, target = tiny_vit(0), tiny_vit(2)
    src = source.state_dict()
    path = tmp_path / "vit.pth"
    torch.save({old: src[new].clone() for old, new in VIT_V4_TO_CURRENT.items()}, path)
    utils.load_weights(target, str(path), "ViT", 10)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


# ---------------------------------------------------------------- all registered models

@pytest.mark.parametrize("net", sorted(models.MODELS))
def test_every_model_maps_cifar_batch_to_class_logits(net):
    kwargs = {"config": tiny_vit_config()} if net == "ViT" else {}
    model = models.MODELS[net](num_classes=10, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


# ---------------------------------------------------------------- load_weights errors

class NotATensor:
    def __init__(self):
        self.payload = [1, 2, 3]


class RunsCodeWhenUnpickled:
    """Unpickling calls os.mkdir(marker): proof that code in a checkpoint would have run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def small_net(classes):
    torch.manual_seed(0)
    return models.SmallCNN(num_classes=classes, width=4)


def test_load_weights_missing_file(tmp_path):
    with pytest.raises(cli.UserError):
        utils.load_weights(small_net(10), str(tmp_path / "nope.pth"), "SmallCNN", 10)


def test_load_weights_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a torch checkpoint\x00" + bytes(range(256)) * 4)
    with pytest.raises(cli.UserError):
        utils.load_weights(small_net(10), str(path), "SmallCNN", 10)


@pytest.mark.parametrize("payload", ["custom_object", "whole_module"])
def test_load_weights_refuses_pickled_objects(tmp_path, payload):
    path = tmp_path / "obj.pth"
    obj = {"a": NotATensor()} if payload == "custom_object" else small_net(10)
    torch.save(obj, path)
    model = small_net(10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.25)
    with pytest.raises(cli.UserError):
        utils.load_weights(model, str(path), "SmallCNN", 10)
    assert all(torch.all(p == 0.25) for p in model.parameters())


def test_load_weights_never_runs_code_from_the_checkpoint(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": RunsCodeWhenUnpickled(str(marker))}, path)
    with pytest.raises(cli.UserError):
        utils.load_weights(small_net(10), str(path), "SmallCNN", 10)
    assert not marker.exists()


def test_load_weights_wrong_number_of_classes_names_the_net(tmp_path):
    path = tmp_path / "sc10.pth"
    torch.save(small_net(10).state_dict(), path)
    with pytest.raises(cli.UserError, match="SmallCNN"):
        utils.load_weights(small_net(5), str(path), "SmallCNN", 5)


@pytest.mark.parametrize("change", ["missing_key", "unexpected_key"])
def test_load_weights_is_strict(tmp_path, change):
    state = small_net(10).state_dict()
    if change == "missing_key":
        del state["fc.bias"]
    else:
        state["fc.extra"] = torch.zeros(1)
    path = tmp_path / "sc.pth"
    torch.save(state, path)
    with pytest.raises(cli.UserError, match="SmallCNN"):
        utils.load_weights(small_net(10), str(path), "SmallCNN", 10)


def test_load_weights_accepts_matching_state_dict(tmp_path):
    path = tmp_path / "sc10.pth"
    src = small_net(10)
    torch.save(src.state_dict(), path)
    torch.manual_seed(99)
    dst = models.SmallCNN(num_classes=10, width=4)
    utils.load_weights(dst, str(path), "SmallCNN", 10)
    torch.testing.assert_close(dst.state_dict(), src.state_dict(), rtol=0, atol=0)


def test_load_weights_refuses_a_non_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(cli.UserError):
        utils.load_weights(small_net(10), str(path), "SmallCNN", 10)

