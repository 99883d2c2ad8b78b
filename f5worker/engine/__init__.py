"""The synthesis engine: upstream's F5-TTS modules loaded without their training stack
(``upstream``) and our batched sampling loop around them (``sampler``)."""
