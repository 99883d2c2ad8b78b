"""f5worker/settings.py: one Settings from the environment, read at start, and a bad value stops
the worker with ``cannot start: VARIABLE: why``, never a traceback."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import validate_storage_config as v
from f5worker.contract import InputError, JobLimits, parse_job
from f5worker.model_files import AsrSettings, ModelSources
from f5worker.settings import RUNPOD_LOG_LEVELS, EngineLimits, HttpSettings, Settings, SettingsError
from f5worker.storage import BucketSettings, CachePaths, S3Limits
from tests.support.bucket import BUCKET_ENV_KEYS
from tests.support.env_vars import env_vars_read_by_code
from tests.support.paths import ROOT

MODULES = sorted(p for p in [*ROOT.glob("*.py"), *(ROOT / "f5worker").glob("*.py")])
PARSED = ("MAX_TEXT_CHARS", "MAX_TEXTS", "VOICE_MAX_BYTES", "VOICE_MAX_SECONDS", "S3_CONNECT_TIMEOUT_S",
          "S3_READ_TIMEOUT_S", "S3_MAX_ATTEMPTS", "S3_PRESIGN_EXPIRES_S", "F5TTS_WARMUP", "LOG_LEVEL",
          "RUNPOD_LOG_LEVEL", "STREAMING", "HF_HUB_OFFLINE", "ENGINE_MAX_BATCH", "ENGINE_MAX_QUEUE",
          "MAX_CONCURRENCY", "WORKER_MODE", "PORT", "PORT_HEALTH", "HTTP_HOST",
          "HTTP_API_KEY")  # by settings.py itself, not by a tier's from_env


def test_defaults_are_the_documented_ones():
    s = Settings.from_env({})
    assert s.s3 == S3Limits(connect_timeout_s=5.0, read_timeout_s=30.0, max_attempts=4, presign_expires_s=86400)
    assert s.jobs == JobLimits(max_text_chars=5000, max_texts=16, voice_max_bytes=50 * 1024 * 1024,
                               voice_max_seconds=300.0)
    flags_and_levels = (s.offline, s.warm_up, s.streaming, s.log_level, s.runpod_log_level)
    assert flags_and_levels == (False, "auto", False, "INFO", "INFO")
    assert s.cache == CachePaths.from_env({}) and s.cache.volume == Path("/runpod-volume")
    assert s.bucket == BucketSettings.from_env({}) and not s.bucket.configured
    assert s.model == ModelSources.from_env({}) and s.model.name == "F5TTS_v1_Base"
    assert s.asr == AsrSettings.from_env({}) and not s.asr.enabled
    assert s.engine == EngineLimits(max_batch=None, max_queue=256, max_concurrency=None)
    assert (s.engine.batch_for("cpu"), s.engine.batch_for("cuda:0")) == (1, 8)
    assert s.mode == "queue"
    assert s.http == HttpSettings(port=80, health_port=None, host="0.0.0.0", api_key=None) and s.http.ping_port == 80
    # an empty number or choice is unset, as RunPod passes a template's blank optional fields
    assert Settings.from_env(dict.fromkeys(PARSED, "")) == s


def test_values_are_parsed():
    s = Settings.from_env({"MAX_TEXTS": " 32 ", "VOICE_MAX_SECONDS": "12.5", "S3_MAX_ATTEMPTS": "1",
                           "S3_PRESIGN_EXPIRES_S": "604800", "LOG_LEVEL": "debug", "RUNPOD_LOG_LEVEL": "warn",
                           "F5TTS_WARMUP": "ON", "STREAMING": "true", "HF_HUB_OFFLINE": "1"})
    numbers = (s.jobs.max_texts, s.jobs.voice_max_seconds, s.s3.max_attempts, s.s3.presign_expires_s)
    assert numbers == (32, 12.5, 1, 604800)
    assert (s.log_level, s.runpod_log_level, s.warm_up, s.streaming, s.offline) == ("DEBUG", "WARN", "1", True, True)
    assert Settings.from_env({"F5TTS_WARMUP": "off"}).warm_up == "0"
    engine = Settings.from_env({"ENGINE_MAX_BATCH": "4", "ENGINE_MAX_QUEUE": "32", "MAX_CONCURRENCY": "64"}).engine
    assert engine == EngineLimits(max_batch=4, max_queue=32, max_concurrency=64)
    http = Settings.from_env({"WORKER_MODE": "Http", "PORT": "8000", "PORT_HEALTH": "8001", "HTTP_HOST": "127.0.0.1",
                              "HTTP_API_KEY": " sk-local "})
    assert http.mode == "http"
    assert http.http == HttpSettings(port=8000, health_port=8001, host="127.0.0.1", api_key="sk-local")
    assert http.http.ping_port == 8001 and Settings.from_env({"PORT": "8000"}).http.ping_port == 8000


def test_the_http_api_key_stays_out_of_the_settings_repr():
    settings = Settings.from_env({"HTTP_API_KEY": "sk-very-secret"})
    assert settings.http.api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(settings)


@pytest.mark.parametrize(("variable", "value", "why"), [
    ("MAX_TEXT_CHARS", "abc", "must be an integer, not 'abc'"),
    ("MAX_TEXTS", "abc", "must be an integer, not 'abc'"),
    ("MAX_TEXTS", "2.5", "must be an integer, not '2.5'"),
    ("MAX_TEXTS", "0", "must be greater than 0, not '0'"),
    ("VOICE_MAX_BYTES", "-5", "must be greater than 0, not '-5'"),
    ("VOICE_MAX_SECONDS", "nan", "must be a number, not 'nan'"),
    ("VOICE_MAX_SECONDS", "5 min", "must be a number, not '5 min'"),
    ("S3_CONNECT_TIMEOUT_S", "0", "must be greater than 0, not '0'"),
    ("S3_READ_TIMEOUT_S", "-1", "must be greater than 0, not '-1'"),
    ("S3_READ_TIMEOUT_S", "inf", "must be a number, not 'inf'"),
    ("S3_MAX_ATTEMPTS", "1.5", "must be an integer, not '1.5'"),
    ("S3_PRESIGN_EXPIRES_S", "604801", "must be at most 604800, not '604801'"),
    ("F5TTS_WARMUP", "always", "must be auto, 1, true, yes, on or 0, false, no, off, not 'always'"),
    ("LOG_LEVEL", "loud", "must be one of CRITICAL, FATAL, ERROR, WARN, WARNING, INFO, DEBUG, NOTSET, not 'loud'"),
    ("RUNPOD_LOG_LEVEL", "WARNING", "must be one of NOTSET, TRACE, DEBUG, INFO, WARN, ERROR, not 'WARNING'"),
    ("F5TTS_MODEL", "F5TTS_v9", "'F5TTS_v9' is not one of ['E2TTS_Base', 'F5TTS_Base', 'F5TTS_v1_Base']; "
                                "a custom model needs F5TTS_CKPT_FILE and F5TTS_MODEL_CONFIG"),
    ("F5TTS_CKPT_FILE", "hf://owner/repo", "'hf://owner/repo' is not of the form hf://owner/repo/path"),
    ("F5TTS_MODEL_CONFIG", "hf://owner//config.yaml", "'hf://owner//config.yaml' is not of the form hf://owner/repo/path"),
    ("F5TTS_VOCAB_FILE", "hf:///repo/vocab.txt", "'hf:///repo/vocab.txt' is not of the form hf://owner/repo/path"),
    ("ENGINE_MAX_BATCH", "0", "must be greater than 0, not '0'"),
    ("ENGINE_MAX_QUEUE", "many", "must be an integer, not 'many'"),
    ("MAX_CONCURRENCY", "65", "must be at most 64, not '65'"),
    ("MAX_CONCURRENCY", "0", "must be greater than 0, not '0'"),
    ("ASR_MODEL", "a/b/c", "'a/b/c' is not a Hugging Face repo id of the form owner/name"),
    ("WORKER_MODE", "serverless", "must be one of QUEUE, HTTP, not 'serverless'"),
    ("PORT", "http", "must be an integer, not 'http'"),
    ("PORT", "65536", "must be at most 65535, not '65536'"),
    ("PORT_HEALTH", "0", "must be greater than 0, not '0'"),
])
def test_a_bad_value_is_one_error_naming_the_variable(variable: str, value: str, why: str):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert (caught.value.variable, caught.value.why) == (variable, why)
    assert str(caught.value) == f"{variable}: {why}"


@pytest.mark.process  # importing the runpod SDK runs py-cpuinfo's subprocess
def test_runpod_log_levels_are_the_sdks():
    from runpod.serverless.modules.rp_logger import LOG_LEVELS

    assert RUNPOD_LOG_LEVELS == tuple(LOG_LEVELS)


def test_hub_json_defaults_and_presets_are_accepted():
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())["config"]
    defaults = {e["key"]: str(e["input"]["default"]) for e in hub["env"] if "default" in e["input"]}
    assert Settings.from_env(defaults).jobs.max_text_chars == 5000
    for preset in hub["presets"]:
        assert Settings.from_env({**defaults, **preset["defaults"]}).model.name == preset["defaults"]["F5TTS_MODEL"]


def test_the_contract_works_without_settings_and_with_the_endpoints_limits():
    three = {"texts": ["a", "b", "c"]}
    assert len(parse_job(three).texts) == 3  # the default limits
    with pytest.raises(InputError, match="texts: has 3 entries, over the limit of 2"):
        parse_job(three, JobLimits(max_texts=2))
    with pytest.raises(InputError, match="text: is 6 characters, over the limit of 5"):
        parse_job({"text": "x" * 6}, JobLimits(max_text_chars=5))


def test_the_worker_built_from_settings_applies_every_limit(bucket_env, scratch):
    from f5worker.pipeline import Worker

    settings = Settings.from_env({**os.environ, **bucket_env, "F5TTS_WARMUP": "0", "S3_CONNECT_TIMEOUT_S": "3",
                                  "S3_READ_TIMEOUT_S": "7", "S3_MAX_ATTEMPTS": "2", "S3_PRESIGN_EXPIRES_S": "600",
                                  "MAX_TEXTS": "2", "VOICE_MAX_BYTES": "1000", "ENGINE_MAX_BATCH": "3",
                                  "ENGINE_MAX_QUEUE": "5"})
    worker = Worker.from_settings(settings)
    scheduler = worker.model.scheduler
    assert (scheduler.max_batch, scheduler.max_queue) == (3, 5)
    config = worker.s3.meta.config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (3, 7, 2)
    fast = {"nfe_step": 2, "seed": 1}
    assert "over the limit of 2" in worker.run({"id": "a", "input": {"texts": ["a", "b", "c"], **fast}})["error"]
    alice = worker.run({"id": "b", "input": {"text": "Hi.", "voice": "alice", **fast}})
    assert "over the 1000-byte limit" in alice["error"]
    result = worker.run({"id": "c", "input": {"text": "Hi.", **fast}})
    assert "X-Amz-Expires=600" in result["audio_url"], result
    worker.model.close()


@pytest.mark.parametrize(("bad", "message"), [
    ({"MAX_TEXTS": "abc"}, "cannot start: MAX_TEXTS: must be an integer, not 'abc'"),
    ({"S3_READ_TIMEOUT_S": "-1"}, "cannot start: S3_READ_TIMEOUT_S: must be greater than 0, not '-1'"),
    ({"F5TTS_MODEL": "F5TTS_v9", "F5TTS_CKPT_FILE": "", "F5TTS_MODEL_CONFIG": ""},
     "cannot start: F5TTS_MODEL: 'F5TTS_v9' is not one of"),
    ({"LOG_LEVEL": "loud"}, "cannot start: LOG_LEVEL: must be one of"),
])
@pytest.mark.process
def test_the_worker_process_with_a_bad_value_stops_with_the_variable_and_no_traceback(bad, message, tmp_path):
    env = {k: val for k, val in os.environ.items() if k not in BUCKET_ENV_KEYS}
    proc = subprocess.run([sys.executable, "runpod_handler.py"], cwd=ROOT, env={**env, "TMPDIR": str(tmp_path), **bad},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.rstrip().splitlines()[-1].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.process
def test_provision_and_the_validator_report_a_bad_value(tmp_path):
    env = {k: val for k, val in os.environ.items() if k not in BUCKET_ENV_KEYS}
    proc = subprocess.run([sys.executable, "provision.py", "fetch"], cwd=ROOT, env={**env, "MAX_TEXTS": "abc"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "provision: MAX_TEXTS: must be an integer, not 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr
    result = v.check_env(v.Settings.from_env({**env, "S3_MAX_ATTEMPTS": "many"}, scratch=tmp_path))
    assert result.status is v.Status.FAIL
    assert result.reason.startswith("S3_MAX_ATTEMPTS: must be an integer, not 'many': the worker would not start")


RECORD_READS = """
import importlib, json, os, sys, sysconfig
from collections.abc import MutableMapping

root, modules = sys.argv[1], sys.argv[2:]
stdlib = sysconfig.get_paths()["stdlib"] + os.sep
reads = []


def looked_through(filename):
    # This script's frames and the standard library's (os.getenv, Mapping.get, tempfile, ...): a
    # read counts as made by the first frame outside them, ours or a third-party library's.
    return filename.startswith("<") or (filename.startswith(stdlib) and "site-packages" not in filename)


class Recording(MutableMapping):
    '''os.environ, noting which variable each access from our own code asks for.'''

    def __init__(self, data):
        self._data = data

    def _note(self, key):
        frame = sys._getframe(2)
        while frame is not None and looked_through(frame.f_code.co_filename):
            frame = frame.f_back
        path = frame.f_code.co_filename if frame is not None else ""
        if path.startswith(root + os.sep) and "site-packages" not in path:
            reads.append([os.path.relpath(path, root), key])

    def __getitem__(self, key):
        self._note(key)
        return self._data[key]

    def __setitem__(self, key, value):
        self._note(key)
        self._data[key] = value

    def __delitem__(self, key):
        self._note(key)
        del self._data[key]

    def __iter__(self):
        self._note("*")
        return iter(dict(self._data))

    def __len__(self):
        return len(self._data)

    def copy(self):
        self._note("*")
        return dict(self._data)


os.environ = Recording(dict(os.environ))
for name in modules:
    importlib.import_module(name)
at_import = list(reads)
heavy = sorted(m for m in ("huggingface_hub", "transformers") if m in sys.modules)
from f5worker.settings import Settings
Settings.from_env(os.environ)
print(json.dumps({"at_import": at_import, "heavy": heavy, "settings": sorted({k for _, k in reads[len(at_import):]})}))
"""


@pytest.mark.process
def test_no_module_reads_the_environment_at_import_or_imports_huggingface_hub():
    """Every module of f5worker/ and every entry point imported in a fresh process whose
    ``os.environ`` records the reads made from our code: none at import (and no huggingface_hub,
    which must come after ``apply_cache_env``). The reads ``Settings.from_env`` then makes show the
    recorder sees them, and that tests/env_vars.py's scan of the source finds each."""
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in MODULES]
    proc = subprocess.run([sys.executable, "-c", RECORD_READS, str(ROOT), *names], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["at_import"] == [] and report["heavy"] == []
    assert {"MAX_TEXTS", "S3_READ_TIMEOUT_S", "F5TTS_MODEL", "BUCKET_NAME", "LOG_LEVEL"} <= set(report["settings"])
    assert set(report["settings"]) <= env_vars_read_by_code()


def test_no_function_defaults_to_the_process_environment():
    """``env: Mapping = os.environ`` would read the environment wherever a caller forgot to pass settings."""
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
                found += [f"{path.name}:{node.name}" for d in defaults if "environ" in ast.unparse(d)]
    assert found == []
