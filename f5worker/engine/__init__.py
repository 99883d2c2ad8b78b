"""The synthesis engine: upstream's F5-TTS modules loaded without their training stack
(``upstream``), our batched sampling loop around them (``sampler``), the attention it masks a
padded batch with (``attention``), and the one thread that owns the model (``scheduler``)."""
