"""A full-size random-weight ``F5TTS_v1_Base`` (337 M parameters) and the published-size Vocos,
written into a Hugging Face cache exactly where the worker and upstream look for the real ones.

Same shapes, dtype (fp32) and key layout (``ema_model.*``) as the published checkpoint, so load
timings are those of the real model; only the values are random.

    python -m bench.full_model DIR   # writes DIR/hub (about 1.4 GB) and prints the env selecting it
"""

from __future__ import annotations

import io
import json
import sys
from importlib.resources import files
from pathlib import Path

import torch
import yaml

from f5worker.model_files import BUILTIN_CHECKPOINTS, DEFAULT_MODEL, VOCODER_REPO, HubFile
from tests.support.tiny_models import tiny_f5_state_dict, tiny_vocos_state_dict, vocos_config, write_hub_file

VOCOS_CONFIG = vocos_config(dim=512, intermediate_dim=1536, num_layers=8)  # the published sizes
REVISION = "0" * 39 + "2"


def full_arch() -> dict:
    config = yaml.safe_load(files("f5_tts").joinpath(f"configs/{DEFAULT_MODEL}.yaml").read_text())
    return config["model"]["arch"]


def build_full_cache(hub_cache: Path) -> dict[str, Path]:
    """Write the model and vocoder into ``hub_cache``; return the checkpoint and vocoder paths."""
    from safetensors.torch import save

    hub = HubFile.parse(BUILTIN_CHECKPOINTS[DEFAULT_MODEL])
    state = tiny_f5_state_dict(arch=full_arch())
    checkpoint = write_hub_file(hub_cache, hub.repo_id, hub.filename, save(state), REVISION)
    del state
    buffer = io.BytesIO()
    torch.save(tiny_vocos_state_dict(config=VOCOS_CONFIG), buffer)
    write_hub_file(hub_cache, VOCODER_REPO, "config.yaml", yaml.safe_dump(VOCOS_CONFIG).encode(), REVISION)
    vocoder = write_hub_file(hub_cache, VOCODER_REPO, "pytorch_model.bin", buffer.getvalue(), REVISION)
    return {"checkpoint": checkpoint, "vocoder_dir": vocoder.parent}


def ensure_full_cache(root: Path) -> dict[str, Path]:
    """:func:`build_full_cache` into ``root/hub`` on the first call (``root/built.json`` marks it built)."""
    marker = root / "built.json"
    if not marker.is_file():
        marker.write_text(json.dumps({k: str(v) for k, v in build_full_cache(root / "hub").items()}))
    return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve()
    paths = build_full_cache(root / "hub")
    print(f"export HF_HOME={root} HF_HUB_CACHE={root / 'hub'} HF_HUB_OFFLINE=1 F5TTS_MODEL={DEFAULT_MODEL}")
    for name, path in paths.items():
        print(f"# {name}: {path}")
