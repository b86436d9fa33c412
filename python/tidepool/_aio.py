"""How AsyncClient results reach their event loop (called on the loop)."""


def deliver(future, ok, value):
    """Resolves `future` unless it was cancelled meanwhile."""
    if not future.done():
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
