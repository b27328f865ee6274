"""Progress bars: one policy for every verb and every library call.

A bar is drawn only when all three hold:

1. the caller asks for it (``progress=`` / ``show=`` of the function, ``progress`` config keys);
2. the command was not given ``--quiet`` (every verb has it; :func:`quiet` scopes it to the run);
3. stderr is a terminal — redirected output (``nohup``, CI logs, pipes) never gets ``\\r`` frames.

tqdm draws; this module only decides whether. :func:`quiet` is a context variable set for the
duration of one verb (not process-wide state), so a library user's own calls are unaffected.
:func:`library_bars` applies the same policy to a bar drawn inside a third-party module that
offers no switch (transformers' GGUF conversion loop), by replacing its ``tqdm`` name for the
duration of the block only.
"""

from __future__ import annotations

import contextvars
import sys
from contextlib import contextmanager
from functools import partial
from typing import Iterator
from unittest import mock

from tqdm.auto import tqdm

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("llavakit_quiet", default=False)


@contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """No bars inside the block when ``on`` (what ``--quiet`` does for one verb)."""
    token = _QUIET.set(bool(on) or _QUIET.get())
    try:
        yield
    finally:
        _QUIET.reset(token)


def enabled(requested: bool | None = True) -> bool:
    """Whether a bar the caller ``requested`` is drawn (see the module docstring)."""
    return bool(requested) and not _QUIET.get() and sys.stderr.isatty()


def bar(iterable=None, *, show: bool | None = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`enabled` says otherwise."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not enabled(show), **kwargs)


@contextmanager
def library_bars(module, show: bool | None = True, name: str = "tqdm") -> Iterator[None]:
    """Within the block, bars that ``module`` draws through its global ``name`` follow this policy."""
    original = getattr(module, name)
    with mock.patch.object(module, name, partial(original, disable=not enabled(show))):
        yield
