"""Export: ONNX files checked against onnxruntime (``slimnet export``; the function is ``slimnet.export``, which is
why this room is not called ``export``).

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.onnx`: export a model to ONNX and prove the file computes what the module computes
"""
