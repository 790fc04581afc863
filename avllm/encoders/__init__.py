"""Frozen media encoders: one file per family (audio: Whisper, visual: CLIP)."""
