"""STORAGE-DEPLOYMENT-GUIDE.md against the code: the env reference, the paths, the commands."""

from __future__ import annotations

import re

from f5worker.model_cache import LEASE_FILE, LEASE_S, LOCK_TIMEOUT_S
from f5worker.storage import CachePaths
from tests.support.env_vars import env_vars_read_by_code
from tests.support.paths import ROOT

GUIDE = (ROOT / "STORAGE-DEPLOYMENT-GUIDE.md").read_text()


def env_reference() -> dict[str, str]:
    """``{variable: default column}`` from the guide's environment reference table."""
    section = GUIDE.split("## 4. Environment reference", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", section, re.MULTILINE)}


def test_every_variable_the_code_reads_is_documented_and_every_documented_one_is_read():
    documented = set(env_reference())
    read = env_vars_read_by_code()
    assert read - documented == set(), "read by the code, missing from the guide"
    assert documented - read == set(), "in the guide, read by no code"


def test_documented_defaults_and_paths_are_the_codes():
    paths = CachePaths.from_env({})
    reference = env_reference()
    assert f"`{paths.volume}`" in reference["RUNPOD_VOLUME_PATH"]
    assert f"`{paths.image_cache}`" in reference["F5TTS_IMAGE_CACHE"]
    for path in (paths.hf_home, paths.hub_cache, paths.runpod_cache, paths.image_cache):
        assert f"`{path}" in GUIDE, path
    assert LEASE_FILE.split("/")[-1] in GUIDE
    assert f"{LEASE_S:.0f} s" in GUIDE and f"{LOCK_TIMEOUT_S:.0f}s" in GUIDE


def test_the_commands_it_gives_exist():
    assert "python provision.py fetch" in GUIDE and "--cache /opt/f5tts/hub" in GUIDE
    assert "python validate_storage_config.py --json" in GUIDE
    for test_filter in re.findall(r"pytest -q -s tests/test_provision.py -k (\w+)", GUIDE):
        assert test_filter in (ROOT / "tests" / "test_provision.py").read_text()
