"""Model builders, one architecture per module, selectable by name."""

from .small_cnn import small_cnn

BUILDERS = {"small_cnn": small_cnn}


def get_builder(name: str):
    """The builder registered under ``name``; lists the choices if unknown."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}. Choose one of: {', '.join(sorted(BUILDERS))}"
        ) from None


__all__ = ["BUILDERS", "get_builder", "small_cnn"]
