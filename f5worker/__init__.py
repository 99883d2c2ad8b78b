"""F5-TTS serving for RunPod: the library behind the entry points at the repository root.

Layers, each importing only those below it:

- ``contract``, ``formats``: the job API (validated input, typed requests), torch-free;
- ``storage``, ``s3``, ``timings``, ``heap``: the three storage tiers, the bucket client, stage timings,
  the C heap's free pages handed back after each job;
- ``model_files`` -> ``model_cache`` -> ``tts_model``: which files, where they are, loading and synthesis;
- ``audio``, ``asr``, ``subtitles``, ``voices``: audio I/O, Whisper, subtitle files, reference voices.
- ``url_fetch``, ``delivery`` -> ``pipeline``: the guarded URL download, where outputs go, and the job
  pipeline (``Worker``) that the RunPod glue in ``runpod_handler.py`` drives.
"""
