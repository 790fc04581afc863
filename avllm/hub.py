"""Models by hub id: `hf:ORG/NAME` (or `hf:ORG/NAME@REVISION`) names an avllm checkpoint on the
Hugging Face Hub. huggingface_hub finds it in the local cache (HF_HOME, HF_HUB_CACHE) and, unless
HF_HUB_OFFLINE=1, downloads what is missing; offline, only the cache is read.

The LLM inside a preset or checkpoint may be a plain hub id (`llm: Qwen/Qwen2.5-7B-Instruct`):
transformers resolves it through the same cache and the same offline switch (avllm/llm.py).
"""

from __future__ import annotations

from .errors import ModelLoadError

PREFIX = "hf:"


def resolve(spec: str) -> str:
    """A local folder for an `hf:` spec (the snapshot in the hub cache); any other spec unchanged."""
    if not spec.startswith(PREFIX):
        return spec
    repo, _, revision = spec[len(PREFIX) :].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelLoadError(f"--model {spec}: expected hf:ORG/NAME, e.g. hf:my-org/avllm-starter")
    from huggingface_hub import is_offline_mode, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = is_offline_mode()
    try:
        return snapshot_download(repo, revision=revision or None, local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        fix = (
            f"fetch it once where the hub is reachable (`hf download {repo}`) or unset HF_HUB_OFFLINE"
            if offline
            else "check the name and your network"
        )
        raise ModelLoadError(f"--model {spec}: not in the local Hugging Face cache; {fix}") from exc
    except HfHubHTTPError as exc:  # unknown repository or revision, gated or private repository
        raise ModelLoadError(f"--model {spec}: the hub refused it ({exc}); check the name and your access") from exc
