"""The one error type operators turn into a report: what went wrong and what to do."""


class ArtistError(Exception):
    """Something the artist can fix. The message names the problem and the remedy, so the
    operator reports it as it is and leaves the scene untouched."""
