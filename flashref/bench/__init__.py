"""flashref.bench: timing attention implementations (what `flashref bench` runs).

One word for one thing: `flashref bench` is the command (flashref/commands/bench.py), this
package is its library, and the repository's bench/ folder holds the scripts that time the
oracle, the autograd engine and the Transformer on a CPU. Every result is a measurement for
people to read; nothing here asserts on time.

- ``flashref.bench.dense``: TFLOP/s of the dense kernel beside torch SDPA's backends and any
  implementation the gate judges (``--impl``), on a GPU or at CPU sizes.
- ``flashref.bench.packed``: the packed entry points, ``--sweep varlen`` (useful TFLOP/s)
  and ``--sweep decode`` (GB/s against a KV cache).
"""
