-- Undoes 012: installed versions keep their lifecycle records, not where their code came from.
DROP TABLE installed_packages;
