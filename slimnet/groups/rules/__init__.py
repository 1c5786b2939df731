"""The channel rules, one module per family; importing this package registers every rule in
:data:`slimnet.groups.registry.RULES` (the contract is written once, in :mod:`slimnet.groups.registry`).

* :mod:`.elementwise`: per-element ops (pass-through) and elementwise combination with broadcasting;
* :mod:`.movement`: view, reshape, cat, split, getitem, pad, shuffles (applied to the id tensor itself);
* :mod:`.mixing`: pooling, interpolation, reductions, softmax (the positions they mix become one unit);
* :mod:`.layers`: conv, linear, norms, PReLU, embedding (they bind atoms to weight slices);
* :mod:`.attention`: matmul, scaled_dot_product_attention, nn.MultiheadAttention (whole heads);
* :mod:`.einsum`: einsum of two operands (contractions over whole heads, as matmul otherwise);
* :mod:`.factories`: tensors created in forward, attribute reads;
* :mod:`.transformers`: Hugging Face's Conv1D, FalconLinear and RMSNorms (keyed by qualified name).
"""

from . import attention, einsum, elementwise, factories, layers, mixing, movement, transformers

__all__ = ["attention", "einsum", "elementwise", "factories", "layers", "mixing", "movement", "transformers"]
