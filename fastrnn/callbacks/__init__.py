"""fastrnn.callbacks: part of the Keras-style training API (fastrnn.layers, models, optimizers, losses, callbacks).

Depends on fastrnn.nn and numpy only; never on fastrnn.torch (docs/design.md, Layers and their dependency rule).
"""
