"""``kubectl finetune``: a kubectl plugin for FineTuneJobs (install the ``[cli]`` extra).

``main`` parses the command line, ``api`` is the only module talking to the cluster, ``render``
(plain text) and ``live`` (the ``rich`` view) are pure, and ``jobs``, ``control`` and
``diagnose`` implement the verbs. ``complete`` answers kubectl's shell completion protocol.
"""
