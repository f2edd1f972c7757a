"""Config files, overrides and validation: bad values fail at start naming the field."""

import importlib.util
import os

import pytest

from cptrans_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(__file__))
CONFIGS = ["demo", "irvi", "infraredcity_lite", "infraredcity_adverse", "roma"]


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates_and_documents_its_command(name):
    c = load(name)
    if name != "demo":
        c.model.vit_weights = "/weights/vit.npz"
        c.data.data_dir = "/data/tfds"
    config_lib.validate(c)
    with open(os.path.join(ROOT, "configs", f"{name}.py")) as f:
        assert "python -m cptrans_jax.train --config configs/" + name in f.read()


def test_paper_numbers():
    irvi = load("irvi")
    assert (irvi.optim.g_lr, irvi.optim.constant_epochs, irvi.data.global_batch_size) == (
        2e-6,
        100,
        1,
    )
    assert (irvi.objective.lambda_cs, irvi.objective.lambda_ctn, irvi.objective.eta) == (
        6.0,
        10.0,
        0.4,
    )
    roma = load("roma")
    assert (roma.method, roma.optim.g_lr, roma.optim.decay_epochs) == ("roma", 1e-5, 100)
    obj = config_lib.build_objective(load("irvi", "variant=no_co"))
    assert (obj.use_co, obj.use_ctn) == (False, True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("variant", "no_such", "config field variant"),
        ("data.frame_size", 30, "config field data.frame_size: must be a multiple of 4"),
        ("data.load_size", 16, "config field data.load_size"),
        ("optim.g_lr", -1.0, "config field optim.g_lr"),
        ("objective.eta", 1.5, "config field objective: objective.eta must be in [0, 1]"),
        ("objective.co_impl", "slow", "objective.co_impl must be 'fast' or 'vmap'"),
        ("train.log_every", 0, "config field train.log_every"),
        ("model.vit.num_heads", 5, "config field model.vit: ViT width 64 not divisible"),
        ("train.conv_impl", "fft", "config field train.conv_impl: must be one of"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    c = load("demo")
    section, _, name = field.rpartition(".")
    target = c
    for part in filter(None, section.split(".")):
        target = target[part]
    target[name] = value
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_lib.validate(c)


def test_real_data_needs_vit_weights_and_bad_args():
    c = load("irvi")
    c.data.data_dir = "/data/tfds"
    with pytest.raises(ValueError, match="model.vit_weights: is required"):
        config_lib.validate(c)
    with pytest.raises(ValueError, match="scene must be one of"):
        load("irvi", "scene=mall")
    with pytest.raises(ValueError, match="must be key=value"):
        load("irvi", "traffic")
    with pytest.raises(ValueError, match="ablations .* are CPTrans's"):
        c = load("roma")
        c.variant = "no_co"
        config_lib.validate(c)


def test_lr_schedule_is_the_per_epoch_linear_policy():
    sched = config_lib.lr_schedule(1.0, steps_per_epoch=10, constant_epochs=2, decay_epochs=3)
    # epochs 0,1 constant; epoch 2 → 1 - 1/4; epoch 3 → 1 - 2/4; epoch 4 → 1 - 3/4
    values = [float(sched(s)) for s in (0, 19, 20, 29, 30, 40, 49, 50, 1000)]
    # past the last epoch (train.max_steps beyond the schedule) the rate is 0, never negative
    assert values == [1.0, 1.0, 0.75, 0.75, 0.5, 0.25, 0.25, 0.0, 0.0]


def test_real_data_fields_are_checked():
    c = load("infraredcity_lite", "scene=monitor,layout=frames")
    c.model.vit_weights = "/weights/vit.npz"
    assert (c.data.scene, c.data.layout) == ("monitor", "frames")
    with pytest.raises(ValueError, match="config field data.data_dir: is required"):
        config_lib.validate(c)
    c.data.data_dir = "/data/tfds"
    config_lib.validate(c)
    c.data.layout = "pairs"
    with pytest.raises(ValueError, match=r"config field data.layout: must be one of \('packed'"):
        config_lib.validate(c)
    c.data.layout = "packed"
    c.data.scene = "rain"
    with pytest.raises(ValueError, match="config field data.scene: infraredcity_lite has scenes"):
        config_lib.validate(c)


def test_conv_impl_auto_is_im2col_on_cpu_only():
    assert config_lib.base_config().train.conv_impl == "auto"
    c = load("demo")
    # The demo forces the native convolution: faster for its tiny G on CPU (configs/demo.py).
    assert c.train.conv_impl == "lax"
    assert config_lib.build_networks(c, "cpu").generator.conv_impl == "lax"
    c.train.conv_impl = "auto"
    for platform, impl in [("cpu", "im2col"), ("gpu", "lax"), ("tpu", "lax"), (None, "lax")]:
        assert config_lib.build_networks(c, platform).generator.conv_impl == impl
    c.train.conv_impl = "im2col"
    assert config_lib.build_networks(c, "tpu").generator.conv_impl == "im2col"
