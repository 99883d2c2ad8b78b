"""Upstream's model code (``f5_tts.model``) without the training stack its package imports."""

from __future__ import annotations

import functools
import importlib.util
import sys
from types import SimpleNamespace

# f5_tts/model's inference modules, each after those it imports
INFERENCE_MODULES = ("utils", "modules", "backbones.dit", "backbones.unett", "backbones.mmdit", "cfm")


@functools.cache
def f5_model() -> SimpleNamespace:
    """``CFM``, the backbones ``DiT``/``UNetT``/``MMDiT`` and the ``utils`` and ``modules`` modules of upstream's
    ``f5_tts.model``, without running ``f5_tts/model/__init__.py``.

    That ``__init__`` imports the ``Trainer``, and with it wandb, datasets and ema_pytorch:
    seconds of every cold start that inference never uses. Here upstream's files are executed
    as themselves, under their own names, each after the modules it imports, so their
    ``from f5_tts.model.x import y`` lines find each other in ``sys.modules`` and the package is
    never imported. Nothing else is put in ``sys.modules``. A later ``import f5_tts.model``
    (the trainer, upstream's ``utils_infer``) runs the real ``__init__``, which takes these same
    modules (it does not bind them as its attributes: reach them with ``from f5_tts.model.x
    import y``); where they were imported first, they are used as they are.
    """
    root = importlib.util.find_spec("f5_tts").submodule_search_locations
    for name in INFERENCE_MODULES:
        qualified = f"f5_tts.model.{name}"
        if qualified in sys.modules:
            continue
        path = next(f"{p}/model/{name.replace('.', '/')}.py" for p in root)
        spec = importlib.util.spec_from_file_location(qualified, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[qualified]
            raise
    loaded = {name: sys.modules[f"f5_tts.model.{name}"] for name in INFERENCE_MODULES}
    return SimpleNamespace(
        CFM=loaded["cfm"].CFM,
        DiT=loaded["backbones.dit"].DiT,
        UNetT=loaded["backbones.unett"].UNetT,
        MMDiT=loaded["backbones.mmdit"].MMDiT,
        utils=loaded["utils"],
        modules=loaded["modules"],
    )
