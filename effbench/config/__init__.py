"""Layer 1, no torch: the pydantic models of bench.toml (`spec`) and of each attention
mechanism's options (`attention`). Validating a spec and `--help` never import torch."""
