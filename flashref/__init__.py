"""flashref: Triton fused attention, checked against a float64 NumPy oracle.

Layout (dependencies flow one way):
    flashref.autograd   tiny reverse-mode autograd over numpy.ndarray
    flashref.reference  the NumPy Transformer and attention oracles
    flashref.kernels    Triton kernels and their torch wrappers
    flashref            this thin top: version, command-line interface
"""

__version__ = "0.1.0"
