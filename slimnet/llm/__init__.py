"""Decoder language models at scale (Llama, Mistral, Qwen2/3, Gemma, Phi-3): the low-memory path.

A large decoder does not fit the in-memory pipeline's budget (the model, its fx trace and the verification copy
at once). This room builds the model on the meta device from a Hugging Face folder, analyses one decoder layer and
reuses that analysis for every layer with the same code, streams the weights shard by shard from safetensors,
collects data statistics and verifies layer by layer on calibration hidden states, and writes a standard Hugging
Face folder when the widths are uniform. It sits just below :mod:`slimnet.api`, beside train/ and sensitivity/.
"""
