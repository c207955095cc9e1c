-- Intents of an import that went to the dead letters and were not re-driven yet: while any
-- are, the import is `failed` (with the reason) and cannot become `done`.
ALTER TABLE roster_imports ADD COLUMN dead_intents integer NOT NULL DEFAULT 0;
