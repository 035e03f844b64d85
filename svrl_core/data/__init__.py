"""Demo datasets (LeRobot v3 layout), statistics and training batches."""

from svrl_core.data.batches import ChunkBatch, chunk_indices, iterate_chunk_batches
from svrl_core.data.lerobot import DatasetError, DemoDataset, Episode, load_dataset, write_dataset
from svrl_core.data.stats import feature_stats

__all__ = ["ChunkBatch", "DatasetError", "DemoDataset", "Episode", "chunk_indices", "feature_stats",
           "iterate_chunk_batches", "load_dataset", "write_dataset"]
