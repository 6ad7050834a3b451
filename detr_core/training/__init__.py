"""Training the bundled detr_shapes model: synthetic scenes, Hungarian matching, the set loss, train, evaluate."""
