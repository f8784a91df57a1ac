"""Models from the ecosystem, as a user names them in job.yaml: built from a small config,
random weights, nothing downloaded. Dropout is off so every layout sees the same numbers."""
from __future__ import annotations

from tests.jobs import GPT_JOB

LLAMA = {
    "name": "transformers:LlamaForCausalLM",
    "options": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64},
}
GPT2 = {  # input embedding and output layer share one weight
    "name": "transformers:GPT2LMHeadModel",
    "options": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}
BERT = {
    "name": "transformers:BertForSequenceClassification",
    "options": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "max_position_embeddings": 64,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}
RESNET = {  # a ResNet on image-shaped input: tabular rows seen as 3 x 8 x 8 images
    "name": "transformers:ResNetForImageClassification",
    "options": {"num_channels": 3, "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
                "layer_type": "basic"},
    "input_shape": [3, 8, 8],
}

# torchvision's own ResNet-18; needs a torchvision build matching torch. Its stem and
# strides bring 32 x 32 images down to 1 x 1 in the last stage, where batch norm already
# normalises over one value per sample: micro-batches of 8 keep that well conditioned.
TORCHVISION_RESNET = {"name": "torchvision.models:resnet18", "options": {}, "input_shape": [3, 32, 32]}

LM_JOB = {**GPT_JOB, "name": "ecosystem-lm", "train": {**GPT_JOB["train"], "steps": 10}}
IMAGE_JOB = {
    "name": "ecosystem-image",
    "model": RESNET,
    "data": {"source": "synthetic", "options": {"samples": 512, "features": 192, "classes": 4, "noise": 2.0}},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "train": {"steps": 10, "seed": 2, "global_batch_size": 16, "micro_batch_size": 4},
    "strategy": {"name": "ddp"},
    "scaling": {"workers": 2},
    "checkpoint": {"every_steps": 0},
}


TORCHVISION_JOB = {
    **IMAGE_JOB,
    "name": "ecosystem-torchvision",
    "model": TORCHVISION_RESNET,
    "data": {"source": "synthetic", "options": {"samples": 512, "features": 3072, "classes": 4, "noise": 2.0}},
    # 5 steps: past about 6 this network is chaotic on these images. The same sequential run
    # at 1 and at 2 threads differs by 5e-7 at step 7, 7e-4 at step 8 and 2 % at step 10.
    "train": {**IMAGE_JOB["train"], "micro_batch_size": 8, "steps": 5},
    # SGD: Adam's first steps are lr x sign(gradient), which turns the rounding noise of this
    # network's near-zero gradient entries into whole steps (a 1e-8 difference at step 1 was
    # 8e-4 in the gradient norm by step 3 under any two summation orders).
    "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9},
}


def write_text_classes(path, rows: int = 480, seed: int = 0) -> None:
    """A JSON-lines file of short texts in three kinds (numbers, words, code), labelled by kind."""
    import json
    import random

    rng = random.Random(seed)
    words = ["river", "stone", "light", "garden", "paper", "window", "orange", "silver"]
    makers = [
        lambda: " ".join(str(rng.randint(0, 9999)) for _ in range(rng.randint(3, 8))),
        lambda: " ".join(rng.choice(words) for _ in range(rng.randint(3, 8))),
        lambda: f"def f{rng.randint(0, 99)}(x): return x * {rng.randint(2, 9)} + {rng.randint(0, 9)}",
    ]
    with open(path, "w") as handle:
        for i in range(rows):
            kind = ["number", "word", "code"][i % 3]
            handle.write(json.dumps({"text": makers[i % 3](), "kind": kind}) + "\n")


TEXT_JOB = {
    "name": "ecosystem-text",
    "model": BERT,
    "data": {"source": "texts.jsonl", "label_column": "kind", "prepare": ["encode_labels", "tokenize_chars"],
             "options": {"context": 24}},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "train": {"steps": 10, "seed": 4, "global_batch_size": 16, "micro_batch_size": 4},
    "strategy": {"name": "ddp"},
    "scaling": {"workers": 2},
    "checkpoint": {"every_steps": 0},
}
