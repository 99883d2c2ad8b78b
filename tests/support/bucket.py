"""The test bucket: its credentials, its voices, and the variables that configure one."""

from __future__ import annotations

from tests.support.audio_bytes import encode_as, reference_wav_bytes

S3_CREDENTIALS = {
    "BUCKET_ACCESS_KEY_ID": "AKIATESTKEYID0000000",
    "BUCKET_SECRET_ACCESS_KEY": "test-secret-key-never-logged",
    "BUCKET_REGION": "us-east-1",
}
ALICE_TEXT = "Some call me nature, others call me mother nature."
BUCKET_ENV_KEYS = ("BUCKET_NAME", "BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY",
                   "BUCKET_REGION")


def populate_bucket(s3, bucket: str) -> None:
    """Create ``bucket`` with voices ``alice`` (wav), ``bob`` (flac) and ``carol`` (mp3), each with its
    transcript, and ``mute`` (wav, no transcript)."""
    s3.create_bucket(Bucket=bucket)
    wav = reference_wav_bytes()
    voices = {
        "alice.wav": wav,
        "bob.flac": encode_as(wav, "FLAC", "PCM_16"),
        "carol.mp3": encode_as(wav, "MP3", "MPEG_LAYER_III"),
        "mute.wav": wav,
    }
    for name, data in voices.items():
        s3.put_object(Bucket=bucket, Key=f"voices/{name}", Body=data)
    for name in ("alice", "bob", "carol"):
        s3.put_object(Bucket=bucket, Key=f"voices/{name}.txt", Body=ALICE_TEXT.encode())
