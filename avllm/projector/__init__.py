"""Projectors: encoder features -> LLM-space tokens.

mlp_pool.MLPPoolProjector turns one time slot of one stream into a fixed number of tokens (one
for the frames, one for the sound; `ModelConfig.projector` records the kind). clip_summary.ClipSummary
reads every slot of both streams at once and writes `summary_tokens` more. AVLLM builds both
directly: they take different inputs, so a registry keyed by name would hold one entry.
"""
