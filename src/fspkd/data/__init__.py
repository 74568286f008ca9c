"""Data sets for fspkd: `load_dataset` decodes (and caches) a data set into uint8 tensors; `BatchLoader`
shuffles, augments a whole epoch at once, normalises and shards batches."""

from fspkd.data.loader import BatchLoader
from fspkd.data.normalize import parse_normalize
from fspkd.data.sets import ImageSet, Splits
from fspkd.data.spec import load_dataset

__all__ = ["BatchLoader", "ImageSet", "Splits", "load_dataset", "parse_normalize"]
