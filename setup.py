"""Build the optional compiled kernel; every other setting lives in pyproject.toml.

The extension is optional: if it cannot be built (no compiler, no Python
headers), the install still succeeds and `thermospec.engine.kernels` falls back to the
pure-Python/NumPy loops, which emit the same tokens.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "thermospec.engine._kernels",
            sources=["src/thermospec/engine/_kernels.c"],
            depends=["src/thermospec/engine/_draft_slots.h"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        ),
        Extension(  # γ-blocks and token trees (engine.block_kernel, tree_kernel; the Python loops give the same blocks)
            "thermospec.engine._blocks",
            sources=["src/thermospec/engine/_blocks.c"],
            depends=["src/thermospec/engine/_draft_slots.h"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        ),
        Extension(  # a trace row's passes over V (targets.trace_rows; the NumPy fallback gives the same bytes)
            "thermospec.targets._trace_rows",
            sources=["src/thermospec/targets/_trace_rows.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        ),
    ]
)
