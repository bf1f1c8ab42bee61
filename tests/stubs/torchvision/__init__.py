"""A stub of torchvision for importing zennit in the tests (zennit reads two class names at import time); PyPI's
torchvision does not import beside torch 2.13 and would pull a CUDA build."""
