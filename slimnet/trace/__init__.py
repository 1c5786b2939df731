"""Tracing: a model into a torch.fx graph (the first stage), and the shape passes that run on it.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.tracer`: trace a model, with an error that points at the user's code when tracing fails
* :mod:`.symbolic`: the symbolic tracer both tracing paths build on, and the attention switch they share
* :mod:`.values`: tracing one call with example values beside the proxies (Hugging Face models)
* :mod:`.reduced`: working at a reduced spatial size, and the full-size shape pass
"""
