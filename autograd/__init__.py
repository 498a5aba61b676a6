"""flashref.autograd"""
