"""demo.sh's last step: one synthesis job sent to a running worker's local API, its audio written
to a file, read back, and described in one line.

    python tools/demo_job.py http://127.0.0.1:8000 out/demo.mp3

The worker is ``runpod_handler.py --rp_serve_api``; the job asks for the audio inline
(``return_base64``), so no bucket is needed.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
from typing import Any

import requests
import soundfile as sf

DEMO_JOB = {"text": "Hello from the F5-TTS RunPod worker.", "output_format": "mp3", "seed": 42, "return_base64": True}


class DemoFailed(Exception):
    pass


def run_job(url: str, job: dict[str, Any]) -> dict[str, Any]:
    """POST ``job`` to ``url``/runsync; the job's output, or DemoFailed with the worker's error."""
    response = requests.post(f"{url}/runsync", json={"input": job}, timeout=600)
    response.raise_for_status()
    answer = response.json()
    if answer.get("status") != "COMPLETED":
        raise DemoFailed(f"the job ended {answer.get('status')}: {answer.get('error')}")
    return answer["output"]


def save_audio(output: dict[str, Any], path: Path) -> str:
    """Write the job's audio to ``path``, decode it back, and say what it holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(output["audio_base64"]))
    wave, sample_rate = sf.read(path)
    if len(wave) == 0 or sample_rate != output["sample_rate"]:
        raise DemoFailed(f"{path} holds {len(wave)} samples at {sample_rate} Hz; the job said {output['sample_rate']}")
    return (f"wrote {path} — {len(wave) / sample_rate:.2f} s of {output['format']} at {sample_rate / 1000:g} kHz, "
            f"voice \"{output['voice']}\"")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the worker's local API, e.g. http://127.0.0.1:8000")
    parser.add_argument("out", type=Path, help="where to write the audio")
    args = parser.parse_args(argv)
    try:
        print(f"demo: {save_audio(run_job(args.url, DEMO_JOB), args.out)}")
    except (DemoFailed, requests.RequestException, sf.LibsndfileError) as err:
        sys.exit(f"demo: failed: {err}")


if __name__ == "__main__":
    main()
