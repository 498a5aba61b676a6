"""flashref.reference"""
