"""Verification: the pruned model must compute what the original computes with the dropped channels masked.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.verifier`: the check itself (verify, VerifyResult)
* :mod:`.bound`: models run with other tensors in place of their own, without copying
* :mod:`.layer_masks`: masking a layer through its activations instead of copying its weight
* :mod:`.noise`: seeded noise for constant tensors, the second check
* :mod:`.culprits`: when a plan is rejected, the groups whose cuts are wrong
"""
