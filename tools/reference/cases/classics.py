"""Reference cases for the classic CNNs: specs/resnet.bb, specs/vgg.bb, specs/densenet.bb.

Tiny configurations come straight from the reference libraries' classes with the same
hyper-parameters as the spec's test models; `resnet18` is the one canonical check (timm,
64x64 input). VGG-11 and DenseNet-121 are not fixtures; they were checked by hand with
`bbc weights --against` and `bbc run` instead.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn
import torchvision
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.densenet import DenseNet
from torchvision.models.vgg import VGG, make_layers

from make_fixtures import (BASE_SEED, count_params, randomise_state_dict, seeded_input,
                           write_case)

SEED = BASE_SEED + 1100  # this family's seeds: SEED + 0, 1, 2, ...
VERSIONS = f"torch {torch.__version__} f32 CPU"


def _resnet_test(out: Path, case: str, block: type, params: int, seed: int) -> None:
    # timm ignores `stem_width` for its plain 7x7 stem (always 64 wide), so stage 1 of these
    # models starts with a 64 -> 8 (or 32) projection shortcut.
    model = ResNet(block=block, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=10)
    assert count_params(model) == params, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, case, model=model, weights=weights, spec="specs/resnet.bb", bbc_model=case,
               dims={"B": 2, "H": 32, "W": 32},
               inputs={"x": seeded_input((2, 3, 32, 32), seed)}, output_name="logits",
               tolerance=1e-4,
               reference=f"timm {timm.__version__} ResNet(block={block.__name__}, layers=(1,1,1,1), "
                         f"channels=(8,16,32,64), num_classes=10), random weights (seed {seed}), "
                         f"{VERSIONS}")


def case_resnet_test(out: Path) -> None:
    _resnet_test(out, "resnet_test", BasicBlock, 91_866, SEED)


def case_resnet_test_bottleneck(out: Path) -> None:
    _resnet_test(out, "resnet_test_bottleneck", Bottleneck, 141_546, SEED + 1)


def case_resnet18(out: Path) -> None:
    seed = SEED + 2
    model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    assert count_params(model) == 11_689_512, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "resnet18", model=model, weights=weights,
               spec="specs/resnet.bb", bbc_model="resnet18",
               dims={"H": 64, "W": 64}, inputs={"x": seeded_input((1, 3, 64, 64), seed)},
               output_name="logits", tolerance=1e-4,
               reference=f"timm {timm.__version__} resnet18(num_classes=1000), random weights "
                         f"(seed {seed}), {VERSIONS}")


def case_vgg_test(out: Path) -> None:
    seed = SEED + 3
    # torchvision's VGG hard-codes a 4096-wide classifier: keep its `features` (from its own
    # `make_layers`, config A with widths / 8) and `avgpool`, and swap in the same classifier
    # with 64-wide hidden layers (same indices 0, 3, 6).
    model = VGG(make_layers([8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"]),
                num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(64 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, 10))
    assert count_params(model) == 350_138, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "vgg_test", model=model, weights=weights,
               spec="specs/vgg.bb", bbc_model="vgg_test",
               dims={"B": 2, "H": 32, "W": 32},
               inputs={"x": seeded_input((2, 3, 32, 32), seed)}, output_name="logits",
               tolerance=1e-4,
               reference=f"torchvision {torchvision.__version__} VGG(make_layers(config A widths / 8)) "
                         f"with classifier Linear(3136,64)-ReLU-Dropout-Linear(64,64)-ReLU-Dropout-"
                         f"Linear(64,10), random weights (seed {seed}), {VERSIONS}")


def case_densenet_test(out: Path) -> None:
    seed = SEED + 4
    model = DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=4,
                     num_classes=10)
    assert count_params(model) == 15_546, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "densenet_test", model=model, weights=weights, spec="specs/densenet.bb",
               bbc_model="densenet_test", dims={"B": 2, "H": 32, "W": 32},
               inputs={"x": seeded_input((2, 3, 32, 32), seed)}, output_name="logits",
               tolerance=1e-4,
               reference=f"torchvision {torchvision.__version__} DenseNet(growth_rate=8, "
                         f"block_config=(2,2), num_init_features=16, bn_size=4, num_classes=10), "
                         f"random weights (seed {seed}), {VERSIONS}")


CASES = {
    "resnet_test": case_resnet_test,
    "resnet_test_bottleneck": case_resnet_test_bottleneck,
    "resnet18": case_resnet18,
    "vgg_test": case_vgg_test,
    "densenet_test": case_densenet_test,
}
