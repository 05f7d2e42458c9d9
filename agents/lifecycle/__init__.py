"""How an agent version lives: its states and the transitions between them
(:mod:`agents.lifecycle.states`), and the manager that applies a transition
under a lease (:mod:`mesh.locks`), fenced by the row's revision, records it in
PostgreSQL with an audit row, gates dispatch through KV (:mod:`mesh.queue.gates`)
and announces it on ``AF_EVENTS`` (:mod:`agents.lifecycle.manager`)."""
