-- Undoes 011: the budget and quota history and the hub's package index go (the
-- live limits stay in KV af_budgets).
DROP TABLE hub_packages;
DROP TABLE limit_changes;
