"""Datasets: the IDX reader and MNIST.

    load_idx(path)                 any IDX file, raw or gzip          fastnn/datasets/idx.py
    mnist.load_data(path=None, download=True)                          fastnn/datasets/mnist.py
"""
from . import mnist
from .idx import load_idx

__all__ = ["load_idx", "mnist"]
