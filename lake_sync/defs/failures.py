"""How core errors become Dagster failures: bad input fails at once, transient trouble is retried."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from lake_sync.errors import ConfigError, MappingConflictError, SourceError


@contextmanager
def no_retry_on_bad_input() -> Iterator[None]:
    """Bad configuration, a missing table or a mapping conflict will not fix itself: fail without retries."""
    try:
        yield
    except (ConfigError, SourceError, MappingConflictError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
