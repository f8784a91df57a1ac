"""Data ingestion: sources, preparation on Ray Data, and the global sample order.

    sources.py          what each source is and how its rows are read
    prepare.py          the cleaning and encoding steps, as Ray Data transforms
    in_memory.py        the same steps over a built-in source's table, in this process
    encode.py           prepared rows as the model reads them: inputs and targets
    pipeline.py         read -> prepare -> split -> encode -> store
    store.py            where prepared splits are kept: in memory, or shards on the run's storage
    prepared.py         what preparation hands the workers
    splits.py           a split in memory, and what every split offers the loop
    shards.py           a split as Parquet shards, read a window at a time
    order.py            each epoch's sample order over a split's shards
    sampler.py          one seeded global order per epoch; each rank's rows of a step
    model_arguments.py  the model sizes a source implies, found without Ray
"""
