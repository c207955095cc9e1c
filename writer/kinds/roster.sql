-- The roster kind's statements (writer/kinds/roster.py), one block per `-- name:` line.
-- `{stage}` is the session's temporary staging table, composed with psycopg.sql. Those that
-- touch the application's tables (lectures, students, enrollments) are composed from the table
-- map in writer/kinds/tables.py.
-- Timestamps come from the intents; none of these statements calls now().

-- name: prepare_stage
-- Staging tables have no statistics: a hash join would scan all of `students` every batch.
-- Index joins only, for this transaction; and whether this session has its staging table.
SELECT set_config('enable_hashjoin', 'off', true),
       set_config('enable_mergejoin', 'off', true),
       to_regclass('pg_temp.' || %(stage)s) IS NOT NULL

-- name: create_stage
-- Emptied at each commit in place (no new file, no catalog change), reused by the session. The
-- text columns come in plain_stage: a table whose columns are all fixed-width or PLAIN has no
-- TOAST table, so each commit empties one file instead of three (the heap, its TOAST table and
-- the TOAST index, which is rebuilt at every commit).
CREATE TEMPORARY TABLE {stage} (
    tenant_id     bigint NOT NULL,
    grade         smallint,
    birth_date    date,
    student_at    timestamptz,
    student_import uuid,
    lecture_id    bigint NOT NULL,
    import_id     uuid NOT NULL,
    enrolled_at   timestamptz NOT NULL
) ON COMMIT DELETE ROWS

-- name: plain_stage
-- One ALTER: the TOAST table is decided after all of its subcommands. PLAIN values are kept
-- inline and uncompressed; a staged row is bounded by the intent contract (phones of 13
-- characters, a name and a school of at most 100), far below a page.
ALTER TABLE {stage}
    ADD COLUMN phone text NOT NULL, ALTER COLUMN phone SET STORAGE PLAIN,
    ADD COLUMN name text NOT NULL, ALTER COLUMN name SET STORAGE PLAIN,
    ADD COLUMN parent_phone text, ALTER COLUMN parent_phone SET STORAGE PLAIN,
    ADD COLUMN school text, ALTER COLUMN school SET STORAGE PLAIN

-- name: copy_stage
COPY {stage} (tenant_id, phone, name, parent_phone, school, grade, birth_date, student_at,
              student_import, lecture_id, import_id, enrolled_at)
FROM STDIN (FORMAT BINARY)

-- name: upsert_roster_statuses
-- Status moves only to a strictly higher rank; values an intent does not carry are kept. An
-- outranked status (a late `queued` after `parsing`, reordered by a takeover) still fills the
-- values the row lacks. Rows of another tenant were refused before (check_tenants).
INSERT INTO roster_imports AS r
    (id, tenant_id, lecture_id, status, status_rank, source_key, report_key, total, valid,
     invalid, duplicates, empty_slots, chunks_expected, error, sample_errors, started_at,
     updated_at)
SELECT * FROM unnest(
    %(id)s::uuid[], %(tenant_id)s::bigint[], %(lecture_id)s::bigint[], %(status)s::text[],
    %(status_rank)s::smallint[], %(source_key)s::text[], %(report_key)s::text[],
    %(total)s::integer[], %(valid)s::integer[], %(invalid)s::integer[],
    %(duplicates)s::integer[], %(empty_slots)s::integer[], %(chunks_expected)s::integer[],
    %(error)s::text[],
    %(sample_errors)s::jsonb[], %(started_at)s::timestamptz[], %(updated_at)s::timestamptz[]
)
ON CONFLICT (id) DO UPDATE SET
    status = CASE WHEN EXCLUDED.status_rank <= r.status_rank OR r.dead_intents > 0 THEN r.status
                  ELSE EXCLUDED.status END,
    status_rank = greatest(EXCLUDED.status_rank, r.status_rank),
    source_key = coalesce(r.source_key, EXCLUDED.source_key),
    report_key = CASE WHEN EXCLUDED.status_rank > r.status_rank
                      THEN coalesce(EXCLUDED.report_key, r.report_key)
                      ELSE coalesce(r.report_key, EXCLUDED.report_key) END,
    total = CASE WHEN EXCLUDED.status_rank > r.status_rank THEN coalesce(EXCLUDED.total, r.total)
                 ELSE coalesce(r.total, EXCLUDED.total) END,
    valid = CASE WHEN EXCLUDED.status_rank > r.status_rank THEN coalesce(EXCLUDED.valid, r.valid)
                 ELSE coalesce(r.valid, EXCLUDED.valid) END,
    invalid = CASE WHEN EXCLUDED.status_rank > r.status_rank
                   THEN coalesce(EXCLUDED.invalid, r.invalid)
                   ELSE coalesce(r.invalid, EXCLUDED.invalid) END,
    duplicates = CASE WHEN EXCLUDED.status_rank > r.status_rank
                      THEN coalesce(EXCLUDED.duplicates, r.duplicates)
                      ELSE coalesce(r.duplicates, EXCLUDED.duplicates) END,
    empty_slots = CASE WHEN EXCLUDED.status_rank > r.status_rank
                       THEN coalesce(EXCLUDED.empty_slots, r.empty_slots)
                       ELSE coalesce(r.empty_slots, EXCLUDED.empty_slots) END,
    chunks_expected = coalesce(r.chunks_expected, EXCLUDED.chunks_expected),
    error = CASE WHEN r.dead_intents > 0 OR EXCLUDED.status_rank <= r.status_rank THEN r.error
                 ELSE coalesce(EXCLUDED.error, r.error) END,
    sample_errors = CASE WHEN EXCLUDED.status_rank > r.status_rank
                         THEN coalesce(EXCLUDED.sample_errors, r.sample_errors)
                         ELSE coalesce(r.sample_errors, EXCLUDED.sample_errors) END,
    started_at = least(r.started_at, EXCLUDED.started_at),
    updated_at = greatest(r.updated_at, EXCLUDED.updated_at)
WHERE EXCLUDED.status_rank > r.status_rank
   OR (r.source_key IS NULL AND EXCLUDED.source_key IS NOT NULL)
   OR (r.chunks_expected IS NULL AND EXCLUDED.chunks_expected IS NOT NULL)
   OR (r.total IS NULL AND EXCLUDED.total IS NOT NULL)
   OR (r.report_key IS NULL AND EXCLUDED.report_key IS NOT NULL)

-- name: add_roster_counts
-- Per-import counters of the chunks applied; a chunk arriving before any status creates the
-- row with a placeholder rank that every status intent outranks.
INSERT INTO roster_imports AS r
    (id, tenant_id, lecture_id, status, status_rank, chunks_applied, created, updated,
     unchanged, enrolled, updated_at)
SELECT n.id, n.tenant_id, n.lecture_id, 'queued', %(placeholder_rank)s, n.chunks, n.created,
       n.updated, n.unchanged, n.enrolled, n.updated_at
FROM unnest(
    %(id)s::uuid[], %(tenant_id)s::bigint[], %(lecture_id)s::bigint[], %(chunks)s::integer[],
    %(created)s::integer[], %(updated)s::integer[], %(unchanged)s::integer[],
    %(enrolled)s::integer[], %(updated_at)s::timestamptz[]
) AS n (id, tenant_id, lecture_id, chunks, created, updated, unchanged, enrolled, updated_at)
ON CONFLICT (id) DO UPDATE SET
    chunks_applied = r.chunks_applied + EXCLUDED.chunks_applied,
    created = r.created + EXCLUDED.created,
    updated = r.updated + EXCLUDED.updated,
    unchanged = r.unchanged + EXCLUDED.unchanged,
    enrolled = r.enrolled + EXCLUDED.enrolled,
    updated_at = greatest(r.updated_at, EXCLUDED.updated_at)

-- name: mark_roster_done
-- `writing` means every chunk was sent; done once all of them are applied, in either order.
UPDATE roster_imports
SET status = 'done', status_rank = %(done_rank)s, finished_at = updated_at
WHERE id = ANY(%(ids)s::uuid[]) AND status = 'writing' AND chunks_applied >= chunks_expected
RETURNING id, tenant_id, total, valid, invalid, duplicates, empty_slots, created, updated,
          unchanged, enrolled

-- name: dead_imports
-- Imports of the batch held `failed` by dead-lettered intents (their progress record says so).
SELECT id, tenant_id, error FROM roster_imports
WHERE id = ANY(%(ids)s::uuid[]) AND dead_intents > 0

-- name: fail_dead
-- Intents of these imports went to the dead letters: the import is `failed` with the reason
-- until they are re-driven. A `done` import, or one of another tenant, is left alone.
INSERT INTO roster_imports AS r
    (id, tenant_id, lecture_id, status, status_rank, dead_intents, error, updated_at)
SELECT n.id, n.tenant_id, n.lecture_id, 'failed', %(placeholder_rank)s, n.dead, %(error)s,
       n.updated_at
FROM unnest(%(id)s::uuid[], %(tenant_id)s::bigint[], %(lecture_id)s::bigint[],
            %(dead)s::integer[], %(updated_at)s::timestamptz[])
    AS n (id, tenant_id, lecture_id, dead, updated_at)
ON CONFLICT (id) DO UPDATE SET
    status = 'failed',
    dead_intents = r.dead_intents + EXCLUDED.dead_intents,
    error = EXCLUDED.error
WHERE r.status <> 'done' AND r.tenant_id = EXCLUDED.tenant_id
RETURNING id, tenant_id, error

-- name: redrive
-- Dead intents of these imports are sent again: once none is left, the import takes back the
-- status its rank stands for (then `done` once its chunks are applied).
UPDATE roster_imports AS r
SET dead_intents = greatest(r.dead_intents - n.sent, 0),
    status = CASE WHEN r.dead_intents - n.sent > 0 THEN r.status
                  ELSE (CASE r.status_rank WHEN 1 THEN 'parsing' WHEN 2 THEN 'writing'
                                           WHEN 3 THEN 'failed' ELSE 'queued' END) END,
    error = CASE WHEN r.dead_intents - n.sent > 0 OR r.status_rank = 3 THEN r.error END
FROM unnest(%(id)s::uuid[], %(sent)s::integer[]) AS n (id, sent)
WHERE r.id = n.id AND r.dead_intents > 0
RETURNING r.id, r.tenant_id, r.status
