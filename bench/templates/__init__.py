"""The chat templates of `pld bench compare`'s generating contenders as package data (``*.j2``).

``gemma.j2`` is Gemma 3's own template (google/gemma-3-*-it tokenizer_config.json): the registry's
Gemma-3 270M GGUF carries none, and llama-cpp-python's built-in "gemma" format drops the system
message, so a user supplies this one; it folds the system prompt into the first user turn.
``chatml.j2`` is ChatML. ``pld.bench.chat`` loads them, named by the model's chat format.
"""
