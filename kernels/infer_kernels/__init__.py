"""Triton kernels for infer, each with a torch reference (import name ``infer_kernels``).

Usable alone (imports nothing from ``infer``). Importing this package does not import
Triton: use ``get_op(name, impl)`` or import a launcher module directly, e.g.
``from infer_kernels.decode_attention import paged_decode_attention``. The references live
in ``infer_kernels.reference`` (``<op>_ref``, same signatures). See kernels/README.md.
"""

from . import reference
from .registry import IMPLS, get_op, op_names

__all__ = ["IMPLS", "get_op", "op_names", "reference"]
