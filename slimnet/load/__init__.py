"""Loading: a model and its example input from what the user typed, and calibration data.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.spec`: MODEL strings and input shapes, parsed without importing torch
* :mod:`.loader`: load a model (torchvision, timm, files, factories)
* :mod:`.hf`: Hugging Face folders (``slimnet.hf`` stays importable: saved folders name it)
* :mod:`.yolo`: Ultralytics YOLO models
* :mod:`.data`: calibration data
"""
