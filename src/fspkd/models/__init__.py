"""The model zoo: ``create(name, num_classes, **options)``, ``list_models()``, ``register_model``."""

from fspkd.models import cifar_resnet, imagenet_resnet, mobilenetv2  # noqa: F401  (registers the models)
from fspkd.models.registry import create, list_models, register_model

__all__ = ["create", "list_models", "register_model"]
