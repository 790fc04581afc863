"""avllm: an instruction-tuned audio-visual chat assistant.

Heavy libraries (torch, transformers, open_clip, whisper) are imported only by the
modules that use them, so `import avllm` and the CLI's argument parsing stay fast.
"""

__version__ = "0.1.0"
