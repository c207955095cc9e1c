-- Numbered rows of a roster left empty (the empty slots of a sign-up sheet): skipped and
-- counted apart from the invalid rows.
ALTER TABLE roster_imports ADD COLUMN empty_slots integer;
