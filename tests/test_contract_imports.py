"""The job contract is the API that an HTTP front end and clients import: it must load, and parse
jobs, without torch, torchaudio or f5_tts, whether imported directly or through another module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib.abc
import sys

BLOCKED = ("torch", "torchaudio", "f5_tts", "wetext", "kaldifst", "jiwer")  # normalisation stays out too


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} may not be imported by the contract")
        return None


sys.meta_path.insert(0, Refuse())
from f5worker.contract import SynthesisRequest, UploadVoiceRequest, parse_job

speech = parse_job({"text": "Hello.", "voice": "alice", "output_format": "mp3", "seed": 3})
assert isinstance(speech, SynthesisRequest) and speech.texts == ("Hello.",) and speech.params.seed == 3, speech
upload = parse_job({"action": "upload_voice", "name": "eve", "transcript": "Hi.", "audio_base64": "UklGRg=="})
assert isinstance(upload, UploadVoiceRequest) and upload.audio == b"RIFF", upload
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "imported before the finder was in place"
print("OK")
"""


@pytest.mark.process
def test_contract_imports_and_parses_without_torch_or_f5_tts():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "OK", done.stderr
