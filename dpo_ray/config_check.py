"""The config's error type and its one check helper: shared by every schema module (config.py, config_loss.py)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or holds a value that cannot work."""


class PackingUnsupported(ConfigError):
    """train/reference.padding_free on a model whose attention lets one packed sequence see another
    (found by modeling.check_packed_attention, in the process that loaded the model)."""


def require(*checks: tuple[bool, str]) -> None:
    """Raise ConfigError with the message of the first (condition, message) whose condition is false."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def cause_of(err: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The innermost exception of type ``kind`` in ``err``'s chain of causes, or None: Ray wraps a
    remote error in a RayTaskError that is also an instance of its type but prints the remote
    traceback; the original is its ``cause``."""
    found, seen = None, err
    while seen is not None:
        if isinstance(seen, kind):
            found = seen
        seen = vars(seen).get("cause") or seen.__cause__ or seen.__context__
    return found


ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def needs_gpu(attn_implementation: str | None) -> bool:
    """Whether a model.attn_implementation value runs on CUDA only (the flash-attention kernels)."""
    return attn_implementation is not None and attn_implementation.startswith("flash_attention")


def dtype_name(name: str, *, on_gpu: bool, bf16: bool = True) -> str:
    """A model.dtype / reference.dtype value resolved: 'auto' -> bfloat16 on GPU (when bf16 is on),
    float32 on CPU; else the named dtype (torch's name, without importing torch)."""
    if name == "auto":
        return "bfloat16" if on_gpu and bf16 else "float32"
    return name
