"""The formats a job can ask for, and their content types: tables only, no codec imported, so the
job contract (:mod:`f5worker.contract`) stays importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 24_000  # F5-TTS and Vocos both work at 24 kHz


@dataclass(frozen=True)
class OutputFormat:
    container: str
    subtype: str
    content_type: str
    endian: str = "FILE"


OUTPUT_FORMATS = {
    "wav": OutputFormat("WAV", "PCM_16", "audio/wav"),
    "flac": OutputFormat("FLAC", "PCM_16", "audio/flac"),
    "mp3": OutputFormat("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "ogg": OutputFormat("OGG", "OPUS", "audio/ogg"),
    # headerless signed 16-bit little-endian, OpenAI's `pcm`
    "pcm": OutputFormat("RAW", "PCM_16", "audio/pcm", "LITTLE"),
}
# Formats whose bytes can be sent piece by piece while synthesis runs: raw PCM, and WAV as a
# streaming header (see `streaming_wav_header`) followed by the same PCM.
STREAM_FORMATS = ("wav", "pcm")
# Formats `audio.StreamEncoder` sends piece by piece as the audio is made (the HTTP server's streams); the
# others (flac, whose header libsndfile completes at the end) come whole once the audio is done.
INCREMENTAL_FORMATS = ("wav", "pcm", "mp3", "ogg")
VOICE_EXTENSIONS = ("wav", "flac", "mp3", "ogg")

# word-timing files a job can ask for (``subtitles``), and their content types
SUBTITLE_FORMATS = {"srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8",
                    "ass": "text/x-ssa; charset=utf-8", "json": "application/json", "csv": "text/csv; charset=utf-8"}


def base64_length(size: int) -> int:
    """Characters of base64 (padded) for ``size`` bytes."""
    return 4 * -(-size // 3)
