"""torch.export programs (`.pt2` from `torch.export.save`): vetting the archive, loading it, and the
TorchScript stand-in that the TorchScript passes optimize (the program itself serves as the original)."""

from .archive import is_exported_archive, vet_exported_archive
from .loading import load_exported_program, traced_stand_in

__all__ = ["is_exported_archive", "load_exported_program", "traced_stand_in", "vet_exported_archive"]
