"""The model zoo: ``create(name, num_classes, **options)``, ``list_models()``, ``register_model``."""

from fspkd.models import (  # noqa: F401  (importing a family registers its models)
    cifar_resnet,
    cifar_resnet_x4,
    imagenet_resnet,
    mobilenetv2,
    mobilenetv2_cifar,
    shufflenet,
    vgg,
    wide_resnet,
)
from fspkd.models.registry import create, list_models, register_model

__all__ = ["create", "list_models", "register_model"]
