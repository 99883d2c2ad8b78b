"""A small load run (the 200-job version is ``bench/load.py``): every job answered, every output
in S3 and decodable, no duplicates, no per-job dir left, RSS within the stated bound."""

from __future__ import annotations

import pytest

from bench.load import MAX_RSS_GROWTH_MIB, run_load


@pytest.mark.process
def test_thirty_jobs_through_the_local_api(start_worker, bucket_env, s3):
    worker = start_worker(bucket_env)
    report = run_load(worker, s3, bucket_env["BUCKET_NAME"], jobs=30, clients=3)
    print(report.table())
    assert report.answered == report.completed == report.sent == 30, report.failed
    assert report.via_runsync == report.via_run_status == 15
    assert report.verified == 30, report.bad_outputs
    assert report.duplicate_keys == report.stray_objects == report.job_dirs_left == 0
    assert report.scratch_unchanged
    assert len(report.combos) == 16  # every voice with every format
    assert 0 < report.rss_after_baseline_mib and report.rss_growth_mib <= MAX_RSS_GROWTH_MIB
    worker.stop()
    assert list(worker.tmpdir.iterdir()) == []


def test_caches_stay_bounded(make_worker, bucket_env):
    """What could grow job after job: the voice cache is an LRU of 16, and upstream's per-path
    reference caches stay empty because references are prepared by voices.py."""
    from f5_tts.infer import utils_infer

    worker = make_worker(bucket_env)
    for i in range(18):
        result = worker.run({"id": f"c{i}", "input": {"text": "Hi.", "voice": "alice", "nfe_step": 2,
                                                      "ref_text": f"Some call me nature, take {i}."}})
        assert "audio_key" in result, result
    assert len(worker.voices._cache) == worker.voices.cache_size == 16
    assert utils_infer._ref_audio_cache == {} and utils_infer._ref_text_cache == {}
