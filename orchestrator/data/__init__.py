"""Data ingestion: sources, preparation on Ray Data, and the global sample order.

    sources.py          what each source is and how its rows are read
    prepare.py          the cleaning and encoding steps, as Ray Data transforms
    in_memory.py        the same steps over a built-in source's table, in this process
    pipeline.py         read -> prepare -> split, into arrays in Ray's object store
    sampler.py          one seeded global order per epoch; each rank's rows of a step
    model_arguments.py  the model sizes a source implies, found without Ray
"""
