"""Import path kept for scripts written before site data became a subpackage.

New code imports `client.site_data.readiness.check`.
"""

from client.site_data.readiness.check import Readiness, as_json, check_site, privacy_status

__all__ = ["Readiness", "as_json", "check_site", "privacy_status"]
