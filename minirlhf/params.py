"""Named parameter arrays that all live in one flat buffer.

`model.params["h.0.attn.c_attn.weight"]` is an ordinary (C, 3C) array, but it is a
*view* into `model.params.flat`, one contiguous vector holding every parameter. The
gradients come in the same layout. So the optimiser updates the whole model in one
pass over two vectors, and a checkpoint, a gradient norm or a finite-difference check
is a loop over one array instead of fifty.
"""
import numpy as np


class FlatParams(dict):
    """A dict of named arrays that are views into `self.flat`, in insertion order."""

    def __init__(self, shapes, dtype, flat=None):
        super().__init__()
        size = sum(int(np.prod(s)) for s in shapes.values())
        self.flat = np.zeros(size, dtype=dtype) if flat is None else flat
        if self.flat.shape != (size,):
            raise ValueError(f"flat buffer has shape {self.flat.shape}, the layout needs ({size},)")
        offset = 0
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            self[name] = self.flat[offset : offset + n].reshape(shape)
            offset += n

    @property
    def shapes(self):
        return {name: a.shape for name, a in self.items()}

    def zeros_like(self):
        """A new FlatParams of zeros with the same names, shapes and dtype (for gradients)."""
        return FlatParams(self.shapes, self.flat.dtype)

    def copy(self):
        return FlatParams(self.shapes, self.flat.dtype, self.flat.copy())
