"""Serving: one process with the Gradio chat UI at / and an OpenAI-compatible API under /v1.

session.py  the clip store (features encoded once per file) and the chat logic both faces share
ui.py       the Gradio Blocks UI
api.py      the /v1 router (chat completions, streaming or not; models)
server.py   settings, the FastAPI app with the UI mounted, uvicorn

Nothing heavy is imported here, so `avllm --help` stays fast.
"""

from .server import BackgroundServer, ServeSettings, build_app, serve

__all__ = ["BackgroundServer", "ServeSettings", "build_app", "serve"]
