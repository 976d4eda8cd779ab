"""The GPU check (`load_tests/gpu_check.py`) and the folder of wheels and models it runs from (`gpu_wheels.py`).

Only the standard library is imported by `wheelhouse`, `cli` and `environment`: they run first, under whatever
Python the GPU host has, before cnnserve and onnxruntime-gpu are installed. Everything else runs in the
environment they prepare.
"""
