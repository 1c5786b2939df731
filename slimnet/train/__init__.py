"""Training: pruning inside the user's training loop.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.pruner`: the Pruner that cuts the user's model in place on a schedule
* :mod:`.schedules`: how much of the way each cut goes
* :mod:`.cuts`: the plans of a gradual prune from one analysis
* :mod:`.optim_state`: the optimizer state and EMA carried through a cut
* :mod:`.integrations`: Lightning and Hugging Face Trainer callbacks (``slimnet.integrations`` stays importable)
"""
