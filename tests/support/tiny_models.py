"""Tiny random-weight F5-TTS, Vocos and Whisper written into a Hugging Face cache layout.

The real loading code (``huggingface_hub`` offline, ``load_model``, ``load_vocoder``) runs
against these exactly as against the published weights; only the sizes differ. Files are
stored as content-addressed blobs with snapshot symlinks and ``refs/main``, as the hub does.

    python -m tests.support.tiny_models DIR   # writes DIR/hub and prints the env that selects it
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

import torch
import yaml

from f5worker.model_files import VOCODER_REPO

TINY_REPO = "tiny-random/f5-tts"
TINY_WHISPER_REPO = "tiny-random/whisper"
# The tiny Whisper's text tokens: whole words, so that its random output reads as words.
TINY_WHISPER_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu one two three four five six seven"
).split()
REVISION = "0" * 39 + "1"
TINY_ARCH = {
    "dim": 64, "depth": 2, "heads": 2, "ff_mult": 2, "text_dim": 32, "conv_layers": 1,
    "text_mask_padding": True, "qk_norm": None, "pe_attn_head": None,
    "attn_backend": "torch", "attn_mask_enabled": False, "checkpoint_activations": False,
}
def vocos_config(dim: int, intermediate_dim: int, num_layers: int) -> dict:
    """A charactr/vocos-mel-24khz config.yaml with the backbone's sizes chosen (published: 512, 1536, 8)."""
    return {
        "feature_extractor": {
            "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
            "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100,
                          "padding": "center"},
        },
        "backbone": {
            "class_path": "vocos.models.VocosBackbone",
            "init_args": {"input_channels": 100, "dim": dim, "intermediate_dim": intermediate_dim,
                          "num_layers": num_layers},
        },
        "head": {
            "class_path": "vocos.heads.ISTFTHead",
            "init_args": {"dim": dim, "n_fft": 1024, "hop_length": 256, "padding": "center"},
        },
    }


TINY_VOCOS = vocos_config(dim=32, intermediate_dim=96, num_layers=1)


def write_hub_file(hub_cache: Path, repo_id: str, filename: str, data: bytes, revision: str = REVISION) -> Path:
    """Store ``data`` as a blob and link it from ``snapshots/<revision>/<filename>``."""
    repo_dir = hub_cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo_dir / "snapshots" / revision / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(Path("../" * (filename.count("/") + 2)) / "blobs" / blob.name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return link


def tiny_f5_state_dict(seed: int = 0, arch: dict = TINY_ARCH) -> dict[str, torch.Tensor]:
    """A random DiT of ``arch`` inside CFM, keyed as upstream's EMA checkpoints are."""
    from f5worker.engine.upstream import f5_model  # not f5_tts.model's __init__: it needs the training stack

    f5 = f5_model()
    torch.manual_seed(seed)
    _, vocab_size = f5.utils.get_tokenizer(str(files("f5_tts").joinpath("infer/examples/vocab.txt")), "custom")
    cfm = f5.CFM(transformer=f5.DiT(**arch, text_num_embeds=vocab_size, mel_dim=100))
    return {f"ema_model.{k}": v.contiguous() for k, v in cfm.state_dict().items()}


def tiny_vocos_state_dict(seed: int = 0, config: dict = TINY_VOCOS) -> dict[str, torch.Tensor]:
    from vocos import Vocos

    torch.manual_seed(seed)
    return Vocos(
        feature_extractor=_instantiate(config["feature_extractor"]),
        backbone=_instantiate(config["backbone"]),
        head=_instantiate(config["head"]),
    ).state_dict()


def _instantiate(spec: dict) -> object:
    module, _, cls = spec["class_path"].rpartition(".")
    return getattr(__import__(module, fromlist=[cls]), cls)(**spec["init_args"])


def tiny_whisper_files(seed: int = 0) -> dict[str, bytes]:
    """A random Whisper (1 layer each side, d_model 32, 80 mel bins) with a byte-level BPE tokenizer
    holding Whisper's special tokens (languages, tasks, ``<|notimestamps|>``, ``<|0.00|>``..``<|30.00|>``)
    and the generation config that word timestamps need (``alignment_heads`` and the token ids), as
    the files of the published repo (``asr.ASR_FILES``).

    Random weights emit arbitrary tokens: the generation config suppresses the byte tokens and
    the special ones so it emits the words of ``TINY_WHISPER_WORDS``, never ends on its first
    token, and ``max_length`` keeps decoding short so tests stay fast.
    """
    import json

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES
    from transformers.utils.logging import disable_progress_bar

    byte_tokens = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*byte_tokens, *(f"\u0120{w}" for w in TINY_WHISPER_WORDS)])}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    languages = [f"<|{code}|>" for code in LANGUAGES]
    specials = ["<|endoftext|>", "<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=64, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=ids("<|startoftranscript|>"),
    )
    generation = GenerationConfig(
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=config.decoder_start_token_id,
        max_length=24, alignment_heads=[[0, 0], [0, 1]], is_multilingual=True,
        lang_to_id={token: ids(token) for token in languages},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, begin_suppress_tokens=[eot],
        suppress_tokens=[*range(len(byte_tokens)), *(ids(t) for t in specials[1:-1])],
    )
    disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = generation
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        tokenizer.save_vocabulary(str(out))
        WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
        (out / "added_tokens.json").write_text(json.dumps({t: ids(t) for t in tokenizer.get_added_vocab()}))
        (out / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": "<|endoftext|>", "additional_special_tokens": specials[1:]}))
        (out / "normalizer.json").write_text("{}")
        return {p.name: p.read_bytes() for p in out.iterdir()}


def build_tiny_cache(hub_cache: Path) -> dict[str, str]:
    """Write the tiny model, vocoder and Whisper into ``hub_cache``; return the env that selects them."""
    import io

    from safetensors.torch import save

    vocab = files("f5_tts").joinpath("infer/examples/vocab.txt").read_bytes()
    config = yaml.safe_dump({"model": {"backbone": "DiT", "arch": TINY_ARCH}}).encode()
    write_hub_file(hub_cache, TINY_REPO, "model.safetensors", save(tiny_f5_state_dict()))
    write_hub_file(hub_cache, TINY_REPO, "vocab.txt", vocab)
    write_hub_file(hub_cache, TINY_REPO, "config.yaml", config)
    buffer = io.BytesIO()
    torch.save(tiny_vocos_state_dict(), buffer)
    write_hub_file(hub_cache, VOCODER_REPO, "config.yaml", yaml.safe_dump(TINY_VOCOS).encode())
    write_hub_file(hub_cache, VOCODER_REPO, "pytorch_model.bin", buffer.getvalue())
    for name, data in tiny_whisper_files().items():
        write_hub_file(hub_cache, TINY_WHISPER_REPO, name, data)
    return tiny_model_env()


def tiny_model_env() -> dict[str, str]:
    return {
        "F5TTS_MODEL": "tiny",
        "F5TTS_CKPT_FILE": f"hf://{TINY_REPO}/model.safetensors",
        "F5TTS_VOCAB_FILE": f"hf://{TINY_REPO}/vocab.txt",
        "F5TTS_MODEL_CONFIG": f"hf://{TINY_REPO}/config.yaml",
        "ASR_MODEL": TINY_WHISPER_REPO,
    }


def tiny_cache_env(home: Path) -> dict[str, str]:
    """The env that selects the tiny models written by ``build_tiny_cache(home / "hub")``, offline."""
    return {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "TORCH_HOME": str(home / "torch"),
        "HF_HUB_OFFLINE": "1",
        **tiny_model_env(),
    }


# The test session's tiny cache: a path only, named for this process; tests/conftest.py writes it
# (and points os.environ at it) in pytest_configure and removes it in pytest_unconfigure.
TINY_HOME = Path(tempfile.gettempdir()) / f"f5tts-tests-hf-{os.getpid()}"
TINY_ENV = tiny_cache_env(TINY_HOME)


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve()
    shutil.rmtree(root / "hub", ignore_errors=True)
    build_tiny_cache(root / "hub")
    for key, value in tiny_cache_env(root).items():
        print(f"export {key}={value}")
