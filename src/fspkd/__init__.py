"""fspkd: knowledge distillation with FSP matrices (Yim, Joo, Bae, Kim, CVPR 2017), with plain training, Hinton
KD and FitNet beside it."""

from fspkd.core.config import RunConfig, Schedule
from fspkd.core.errors import FspkdError
from fspkd.core.fsp import ChannelShuffle, fsp_loss, fsp_matrix, shuffle_fsp
from fspkd.core.settings import resolve_config
from fspkd.distiller import Distiller
from fspkd.training.run import train

__version__ = "0.1.0"
__all__ = ["ChannelShuffle", "Distiller", "FspkdError", "RunConfig", "Schedule", "fsp_loss", "fsp_matrix", "resolve_config",
           "shuffle_fsp", "train", "__version__"]
