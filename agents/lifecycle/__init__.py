"""How an agent version lives: its states and the transitions between them
(:mod:`agents.lifecycle.states`). The manager that applies transitions under a
lease (:mod:`mesh.locks`), records them in PostgreSQL and publishes them is
still to come (issue 22)."""
