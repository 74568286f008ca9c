"""fspkd: knowledge distillation with FSP matrices (Yim, Joo, Bae, Kim, CVPR 2017), with plain training, Hinton
KD and FitNet beside it."""

from .errors import FspkdError
from .fsp import ChannelShuffle, fsp_loss, fsp_matrix, shuffle_fsp

__version__ = "0.1.0"
__all__ = ["ChannelShuffle", "FspkdError", "fsp_loss", "fsp_matrix", "shuffle_fsp", "__version__"]
