"""The model: DETR and DETRdemo built natively, their configs, the zoo of known models, their checkpoints."""
