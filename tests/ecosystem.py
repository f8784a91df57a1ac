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
