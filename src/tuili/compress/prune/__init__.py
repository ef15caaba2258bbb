"""Pruning: unstructured magnitude pruning (global / per layer, one-shot / gradual) and structured
channel pruning over a channel dependency graph traced with torch.fx.

    prune_unstructured(model, sparsity, scope=, schedule=, steps=, data=, epochs=) -> PruneResult
    prune_channels(model, example, ratio= | flops_target=, criterion=l1|l2|bn|taylor, data=, epochs=)
        -> StructuredResult (a physically smaller module)
    trace(model, example) -> ChannelGraph     bn_l1_regularizer(strength)     storage_bytes(weights)

torch is imported by the functions, not by this package."""
from tuili.compress.prune.structured import CRITERIA, StructuredResult, bn_l1_regularizer, flops, prune_channels
from tuili.compress.prune.unstructured import (
                                               PruneResult,
                                               cubic_schedule,
                                               magnitude_masks,
                                               prune_unstructured,
                                               sparsity_table,
                                               storage_bytes,
)

__all__ = ["CRITERIA", "PruneResult", "StructuredResult", "bn_l1_regularizer", "cubic_schedule", "flops",
           "magnitude_masks", "prune_channels", "prune_unstructured", "sparsity_table", "storage_bytes"]
