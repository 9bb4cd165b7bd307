"""Kernel tests: every Triton launcher against its torch reference.

Without CUDA the kernels run under the Triton interpreter (numpy on CPU): importing
kernel_test_utils sets TRITON_INTERPRET=1 before any kernel module is imported.
"""

import kernel_test_utils  # noqa: F401  (side effect: TRITON_INTERPRET before triton.jit)
