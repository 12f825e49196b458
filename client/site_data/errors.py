"""The one exception that means a site cannot train at all."""


class SiteDataError(Exception):
    """The site cannot train; the message names the file/field and what to do."""
