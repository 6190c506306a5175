"""Checkpoint directories: the ``checkpoints.json`` manifest and best/latest lookups.

Example:
    ```python
    import tempfile

    from promptfit.checkpoints import best_checkpoint, latest_checkpoint

    directory = tempfile.mkdtemp()
    assert best_checkpoint(directory) is None and latest_checkpoint(directory) is None
    ```
"""

from promptfit.checkpoints.manifest import (
    CheckpointManifest,
    best_checkpoint,
    latest_checkpoint,
    read_manifest,
)

__all__ = ["CheckpointManifest", "best_checkpoint", "latest_checkpoint", "read_manifest"]
