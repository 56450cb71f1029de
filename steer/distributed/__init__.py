"""Training beyond one process: trainer ranks on torch.distributed + FSDP2, placed by Ray (docs/distributed.md).

``partition`` (no torch.distributed needed) is what ``steer.update.policy_update`` reads; ``fsdp``, ``rank`` and
``group`` import torch.distributed and Ray, and are imported only by a run with ``trainer.backend: ray``.
"""
