"""`convsync import`: historical messages from another inbox, as events with ``source = import``."""

from producers.importer.exceptions import ImportLineError
from producers.importer.lines import envelope_of, read_lines
from producers.importer.load import Importer, Progress, check_file, import_file

__all__ = [
    "ImportLineError",
    "Importer",
    "Progress",
    "check_file",
    "envelope_of",
    "import_file",
    "read_lines",
]
