"""The analysis of one forward pass: capture every attention map; read maps, rollout, relevance, statistics."""
