"""Where the worker finds model files: the volume cache, then RunPod's cached models, then the image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from f5worker.model_cache import find_cached, resolve_file, resolve_model
from f5worker.model_files import HubFile, ModelFilesMissing, ModelSources
from f5worker.storage import CachePaths
from tests.support.tiny_models import TINY_ENV, write_hub_file

TIERS = ("volume", "runpod", "image")
REF = "hf://owner/repo/weights/model.bin"


def test_default_locations_and_order():
    paths = CachePaths.from_env({})
    assert paths.hub_cache == Path("/runpod-volume/models/hub")
    assert paths.fallback_caches == (Path("/runpod-volume/huggingface-cache/hub"), Path("/opt/f5tts/hub"))
    moved = CachePaths.from_env({"RUNPOD_VOLUME_PATH": "/vol", "F5TTS_IMAGE_CACHE": "/img"})
    assert moved.hub_cache == Path("/vol/models/hub")
    assert moved.fallback_caches == (Path("/vol/huggingface-cache/hub"), Path("/img"))


def test_a_volume_cache_that_is_runpods_cache_is_searched_once():
    paths = CachePaths.from_env({"HF_HUB_CACHE": "/runpod-volume/huggingface-cache/hub"})
    assert paths.fallback_caches == (Path("/opt/f5tts/hub"),)


@pytest.mark.parametrize("present", [("volume", "runpod", "image"), ("runpod", "image"), ("image",),
                                     ("volume", "image"), ("runpod",)])
def test_the_first_tier_holding_the_file_wins(tmp_path, present):
    caches = {tier: tmp_path / tier for tier in TIERS}
    hub = HubFile.parse(REF)
    for tier in present:
        write_hub_file(caches[tier], hub.repo_id, hub.filename, tier.encode())
    path = resolve_file(REF, caches["volume"], allow_download=False, fallbacks=(caches["runpod"], caches["image"]))
    assert path.read_bytes() == present[0].encode()
    assert path.is_relative_to(caches[present[0]])


def test_runpods_cache_is_used_without_refs_main(tmp_path):
    """RunPod documents ``models--owner--repo/snapshots/<hash>/``; a ``refs/main`` is not promised."""
    hub = HubFile.parse(REF)
    write_hub_file(tmp_path / "runpod", hub.repo_id, hub.filename, b"runpod", revision="a" * 40)
    shutil.rmtree(tmp_path / "runpod" / hub.repo_folder / "refs")
    assert find_cached(hub, [tmp_path / "volume", tmp_path / "runpod"]).read_bytes() == b"runpod"


def test_a_file_in_no_tier_names_every_place_searched(tmp_path):
    caches = [tmp_path / tier for tier in TIERS]
    with pytest.raises(ModelFilesMissing) as err:
        resolve_file(REF, caches[0], allow_download=False, fallbacks=caches[1:])
    assert REF in str(err.value) and all(str(c) in str(err.value) for c in caches)


def test_a_model_split_across_tiers_resolves_without_any_download(tmp_path):
    """Checkpoint baked into the image, vocoder from RunPod's cache, the rest on the volume: the
    in-process hub is offline (HF_HUB_OFFLINE=1), so any download attempt would fail."""
    tiny = Path(TINY_ENV["HF_HUB_CACHE"])
    sources = ModelSources.from_env(TINY_ENV)
    tier_of = {sources.checkpoint: "image", **dict.fromkeys(sources.vocoder, "runpod")}
    for ref in sources.file_refs():
        hub = HubFile.parse(ref)
        write_hub_file(tmp_path / tier_of.get(ref, "volume"), hub.repo_id, hub.filename,
                       find_cached(hub, [tiny]).read_bytes())
    resolved = resolve_model(sources, tmp_path / "volume", allow_download=True,
                             fallbacks=(tmp_path / "runpod", tmp_path / "image"))
    assert resolved.checkpoint.is_relative_to(tmp_path / "image")
    assert resolved.vocoder_dir.is_relative_to(tmp_path / "runpod")
    assert resolved.vocab.is_relative_to(tmp_path / "volume")
