"""Oracle labels: for every sample and every scale, did the M3 model answer correctly?

``build_oracle`` writes Parquet shards + a manifest (resumable; one share per process under ``accelerate launch``
or ``torchrun``), ``load_oracle`` reads them back as a ``pyarrow.Table`` (its docstring documents the columns),
``load_oracle_dataset`` / ``load_oracle_dataframe`` as a ``datasets.Dataset`` / pandas ``DataFrame``, and
``write_report`` renders accuracy per scale, both oracles and the label distributions. See docs/oracle.md.
"""

from .build import build_oracle
from .datasets import Sample, dataset_image_reader, load_samples
from .labels import monotone_oracle, paper_oracle
from .report import summarize_oracle, write_report
from .store import (
    OracleMismatchError,
    compare_oracles,
    load_oracle,
    load_oracle_dataframe,
    load_oracle_dataset,
    oracle_schema,
    oracle_table,
    read_manifest,
)

__all__ = [
    "OracleMismatchError",
    "Sample",
    "build_oracle",
    "compare_oracles",
    "dataset_image_reader",
    "load_oracle",
    "load_oracle_dataframe",
    "load_oracle_dataset",
    "load_samples",
    "monotone_oracle",
    "oracle_schema",
    "oracle_table",
    "paper_oracle",
    "read_manifest",
    "summarize_oracle",
    "write_report",
]
