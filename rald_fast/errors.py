"""Every error that means bad input, in one light module (no torch), so a command line can tell a
user's mistake from a bug without importing the modules that raise them.

Each message names the file, line or option at fault. `rald_fast.cli.run_cli` prints these as one
`error: ...` line (exit status 2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file or image that cannot be used."""


class ImageTooLarge(DataError):
    """An image over the pixel limit (--max-pixels): refused from its header, before it is decoded."""


class MediaError(DataError):
    """An input photo or video that cannot be read: the message names the file and the reason."""


class TaxonomyError(ValueError):
    """A taxonomy file or label that does not fit the taxonomy."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run."""


class ArtifactError(ValueError):
    """An artifact that is not a rald_fast model this version can run, or that cannot be made."""


class BackboneWeightsError(ValueError):
    """A backbone weights file that cannot be used."""


class MissingLabelVectorError(KeyError):
    """A label (or one of its words) has no vector in the word-vector file."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class TrainingError(RuntimeError):
    """Training cannot continue (for example a non-finite loss)."""


# errors that describe bad input; anything else is a bug
USER_ERRORS = (ValueError, FileNotFoundError, DataError, CheckpointError, TaxonomyError, ArtifactError,
               BackboneWeightsError, MissingLabelVectorError, TrainingError)
