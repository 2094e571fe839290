"""Spec fragments shared by the command-line tests."""

# One small model of every mechanism, sized for 16-17 token sequences (4x4 patches + CLS).
TINY_MODELS = """
[[models]]
name = "standard"
attention = { kind = "standard" }
[[models]]
name = "fused"
attention = { kind = "fused" }
[[models]]
name = "sdpa"
attention = { kind = "sdpa" }
[[models]]
name = "linformer"
attention = { kind = "linformer", k = 8 }
[[models]]
name = "performer"
attention = { kind = "performer", features = 16 }
[[models]]
name = "nystrom"
attention = { kind = "nystrom", landmarks = 4, conv_kernel = 3 }
[[models]]
name = "hybrid"
attention = { kind = "hybrid", window = 3, dilation = 1 }
"""
