"""The names of the data sources a job can give, known without reading anything."""

BUILTIN_SOURCES = ("synthetic", "digits", "chars")
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
