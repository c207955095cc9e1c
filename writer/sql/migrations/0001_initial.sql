-- The writer's own tables, in its schema (WRITER_SCHEMA, the migrating session's search path).
-- The built-in domain tables (students, lectures, enrollments, videos) are created by
-- writer/sql/tables/ when no application tables are configured.
-- Timestamps come from the intents (occurred_at), never from now(), so replaying the
-- write-intent log yields the same contents.

CREATE TABLE roster_imports (
    id              uuid PRIMARY KEY,
    tenant_id       bigint NOT NULL,
    lecture_id      bigint NOT NULL,
    status          text NOT NULL CHECK (status IN ('queued', 'parsing', 'writing', 'done', 'failed')),
    status_rank     smallint NOT NULL,
    source_key      text,
    report_key      text,
    total           integer,
    valid           integer,
    invalid         integer,
    duplicates      integer,
    chunks_expected integer,
    chunks_applied  integer NOT NULL DEFAULT 0,
    created         integer NOT NULL DEFAULT 0,
    updated         integer NOT NULL DEFAULT 0,
    unchanged       integer NOT NULL DEFAULT 0,
    enrolled        integer NOT NULL DEFAULT 0,
    error           text,
    sample_errors   jsonb,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX roster_imports_tenant_idx ON roster_imports (tenant_id);

-- The writer's own state.

-- Ids of every intent applied, written in the same transaction as its effect.
CREATE TABLE writer_ledger (
    intent_id   uuid PRIMARY KEY,
    batch_seq   bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX writer_ledger_applied_at_idx ON writer_ledger (applied_at);

-- Global batch sequence: taken inside each batch's transaction, it orders the write-intent log
-- across writers (an active one and the standby that took over).
CREATE SEQUENCE writer_batch_seq;

-- Intents the writer could not apply, with the reason; listed and re-driven by
-- `jobplatform dead`.
CREATE TABLE writer_dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    intent_id   uuid,
    kind        text,
    tenant_id   bigint,
    queue       text NOT NULL,
    body        text NOT NULL,
    reason      text NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    retried_at  timestamptz
);
CREATE INDEX writer_dead_letters_failed_at_idx ON writer_dead_letters (failed_at);
