"""Data ingestion: sources, preparation on Ray Data, and the global sample order."""
from orchestrator.data.pipeline import PreparedData, Split, prepare_data
from orchestrator.data.sampler import GlobalBatchSampler

__all__ = ["GlobalBatchSampler", "PreparedData", "Split", "prepare_data"]
