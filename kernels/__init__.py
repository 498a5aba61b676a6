"""flashref.kernels"""
