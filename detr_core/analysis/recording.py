"""One recording context for hooks on a shared model: used by the capture and by relevance.

One model is shared by every user of the dashboard, and a hook registered by one recording fires in
every thread that runs the model. So a recorder is made active for the current thread only (a
ContextVar), each hook asks `is_active(self)` before it records, and the hooks are removed in a
`finally` however the forward pass ends.

`attention_inputs` reads an `nn.MultiheadAttention` forward call's arguments as a hook sees them
(positional or keyword), so both recorders parse them the same way.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor
from torch.utils.hooks import RemovableHandle

__all__ = ["AttentionInputs", "attention_inputs", "is_active", "recording"]

_ACTIVE: contextvars.ContextVar[object | None] = contextvars.ContextVar("detr_recording_active", default=None)


def is_active(recorder: object) -> bool:
    """Whether `recorder` is the recording of the current thread (hooks of any other do nothing)."""
    return _ACTIVE.get() is recorder


@contextmanager
def recording(recorder: object) -> Iterator[list[RemovableHandle]]:
    """Make `recorder` active in this thread; yields a list to append hook handles to, all removed
    (and the recorder made inactive) on exit, also when the forward pass raises."""
    handles: list[RemovableHandle] = []
    token = _ACTIVE.set(recorder)
    try:
        yield handles
    finally:
        _ACTIVE.reset(token)
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class AttentionInputs:
    """The arguments of one `nn.MultiheadAttention.forward` call ([T, B, E], or [B, T, E] if batch_first)."""

    query: Tensor
    key: Tensor
    value: Tensor
    key_padding_mask: Tensor | None  # [B, T_k]
    attn_mask: Tensor | None


def attention_inputs(args: tuple, hook_rest: tuple) -> AttentionInputs:
    """The call's inputs from a `with_kwargs=True` forward hook's (args, *rest).

    `hook_rest` is (kwargs, output), or just (output,): while another thread registers a
    with_kwargs hook, torch can briefly call it without kwargs.
    """
    kwargs = hook_rest[0] if len(hook_rest) == 2 else {}

    def arg(i: int, name: str) -> Tensor | None:
        return args[i] if len(args) > i else kwargs.get(name)

    return AttentionInputs(
        query=arg(0, "query"),
        key=arg(1, "key"),
        value=arg(2, "value"),
        key_padding_mask=arg(3, "key_padding_mask"),
        attn_mask=arg(5, "attn_mask"),
    )
