"""Small jobs the tests train: tiny models, a few hundred samples, fp32 on CPU."""

MLP_JOB = {
    "name": "mlp-parity",
    "model": {"name": "mlp", "options": {"hidden": [32, 32]}},
    "data": {"source": "synthetic", "options": {"samples": 1024, "features": 12, "classes": 4, "noise": 3.0}},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"steps": 30, "seed": 3, "global_batch_size": 32, "micro_batch_size": 8},
    "strategy": {"name": "ddp"},
    "scaling": {"workers": 2},
    "checkpoint": {"every_steps": 0},
}

ADAMW = {"name": "adamw", "lr": 0.003, "weight_decay": 0.01}

GPT_JOB = {
    "name": "gpt-parity",
    "model": {"name": "gpt", "options": {"depth": 2, "width": 32, "heads": 4}},
    "data": {"source": "chars", "prepare": ["tokenize_chars"], "options": {"context": 16, "max_chars": 40000}},
    "optimizer": ADAMW,
    "train": {"steps": 30, "seed": 1, "global_batch_size": 16, "micro_batch_size": 4},
    "strategy": {"name": "ddp"},
    "scaling": {"workers": 2},
    "checkpoint": {"every_steps": 0},
}

USER_MODEL_JOB = {
    **MLP_JOB,
    "name": "user-model-parity",
    "model": {"name": "tests.user_models:linear_stack", "options": {"width": 32}},
}
