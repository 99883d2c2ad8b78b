"""The README's two commands: that they are what CI and the scripts run, demo.sh's last step
against the worker as a real process, and test.sh's answer to a run that collects no test."""

from __future__ import annotations

import subprocess

import pytest
import soundfile as sf

from tests.support.paths import ROOT
from tools import demo_job


def commands(path: str) -> list[str]:
    """The command lines of a shell script: no comments, no blank lines."""
    return [line for line in (ROOT / path).read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_two_commands_are_what_ci_and_the_scripts_run():
    section = (ROOT / "README.md").read_text().split("## The two commands", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    readme = [line.split("#")[0].strip() for line in block.splitlines()]
    assert readme == ["bash demo.sh", "bash test.sh"]
    assert commands(".ci/run")[-1] == "bash test.sh"
    test_sh, demo_sh = commands("test.sh"), commands("demo.sh")
    assert test_sh.index("bash setup.sh || exit") < test_sh.index('.venv/bin/python -m pytest -q "$@"')
    assert "bash setup.sh" in demo_sh[:3]  # set up before anything else
    assert demo_sh[-1] == '.venv/bin/python tools/demo_job.py "http://127.0.0.1:$PORT" out/demo.mp3'


@pytest.mark.process
def test_demo_job_writes_a_playable_file_and_says_what_it_holds(start_worker, tmp_path, capsys):
    worker = start_worker({})
    out = tmp_path / "out" / "demo.mp3"
    demo_job.main([worker.url, str(out)])
    line = capsys.readouterr().out.strip()
    wave, sample_rate = sf.read(out)
    assert sample_rate == 24_000 and len(wave) > 0
    assert line == f'demo: wrote {out} — {len(wave) / sample_rate:.2f} s of mp3 at 24 kHz, voice "default"'
    with pytest.raises(demo_job.DemoFailed, match="the job ended FAILED: input.text"):
        demo_job.run_job(worker.url, {"text": ""})


@pytest.mark.process
def test_test_sh_fails_a_run_that_collects_no_test():
    result = subprocess.run(["bash", "test.sh", "--noconftest", "tests/support"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "test.sh: pytest collected no tests (exit 5)" in result.stderr
