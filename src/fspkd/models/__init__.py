"""The model zoo: ``create(name, num_classes, **options)``, ``list_models()``, ``register_model``."""

from . import cifar_resnet, imagenet_resnet  # noqa: F401  (registers the models)
from .registry import create, list_models, register_model

__all__ = ["create", "list_models", "register_model"]
