"""Import path kept for scripts written before site data became a subpackage.

New code imports `client.site_data.labs`.
"""

from client.site_data.labs import LAB_COLUMNS, LabCounts, lab_matrix

__all__ = ["LAB_COLUMNS", "LabCounts", "lab_matrix"]
