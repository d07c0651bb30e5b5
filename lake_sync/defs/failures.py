"""How core errors become Dagster failures: bad input fails at once, transient trouble is retried."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from lake_sync.errors import ConfigError, MappingConflictError, SourceError, TooManyErrorsError


@contextmanager
def no_retry_on_bad_input() -> Iterator[None]:
    """Bad configuration, a missing table, a mapping conflict or rows past the error budget will not fix
    themselves: fail without retries (a retry would read the same rows and fail the same way)."""
    try:
        yield
    except (ConfigError, SourceError, MappingConflictError, TooManyErrorsError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
