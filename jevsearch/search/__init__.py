"""Scoring: MaxSim as pure tensor functions (:mod:`.maxsim`) and page packing (:mod:`.pack`)."""
