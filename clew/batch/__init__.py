"""Tracing many prompts into a graph store, in this process or on Ray, and what the graphs say together."""

from clew.batch.prompts import PromptFile, PromptSpec, read_prompts
from clew.batch.run import BatchConfig, Outcome, RunReport, Worker, run_batch, trace_one
from clew.batch.store import GraphStore, open_stores

__all__ = [
    "BatchConfig",
    "GraphStore",
    "Outcome",
    "PromptFile",
    "PromptSpec",
    "RunReport",
    "Worker",
    "open_stores",
    "read_prompts",
    "run_batch",
    "trace_one",
]
