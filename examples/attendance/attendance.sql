-- The attendance kind: its table (a migration the writer applies) and its statements.

-- migration: 0001_attendance_marks
CREATE TABLE attendance_marks (
    tenant_id   bigint NOT NULL,
    lecture_id  bigint NOT NULL,
    phone       text NOT NULL,
    day         date NOT NULL,
    mark        text NOT NULL CHECK (mark IN ('present', 'late', 'absent', 'excused')),
    state       text NOT NULL CHECK (state IN ('recorded', 'reviewed', 'final')),
    state_rank  smallint NOT NULL,
    note        text,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, lecture_id, phone, day)
);

-- name: upsert_marks
-- One row per (tenant, lecture, phone, day); it changes only for a strictly higher state, so
-- a late "recorded" never undoes a "final". A note the winner lacks keeps the row's.
INSERT INTO attendance_marks AS a
    (tenant_id, lecture_id, phone, day, mark, state, state_rank, note, updated_at)
SELECT * FROM unnest(
    %(tenant_id)s::bigint[], %(lecture_id)s::bigint[], %(phone)s::text[], %(day)s::date[],
    %(mark)s::text[], %(state)s::text[], %(state_rank)s::smallint[], %(note)s::text[],
    %(updated_at)s::timestamptz[]
)
ON CONFLICT (tenant_id, lecture_id, phone, day) DO UPDATE SET
    mark = EXCLUDED.mark,
    state = EXCLUDED.state,
    state_rank = EXCLUDED.state_rank,
    note = coalesce(EXCLUDED.note, a.note),
    updated_at = EXCLUDED.updated_at
WHERE EXCLUDED.state_rank > a.state_rank
RETURNING 1
