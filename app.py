"""`python app.py [--port 7860 --model starter ...]`: the Gradio UI at / and the OpenAI-compatible
API at /v1, with the default model; the same flags as `avllm serve`."""

import sys

from avllm.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
