-- The full schema, equal to what the numbered migrations build (a test checks it).
-- Timestamps come from the intents (occurred_at), never from now(), so replay is deterministic.

CREATE TABLE lectures (
    id          bigint PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX lectures_tenant_idx ON lectures (tenant_id);

CREATE TABLE students (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    phone         text NOT NULL,
    name          text NOT NULL,
    parent_phone  text,
    school        text,
    grade         smallint CHECK (grade BETWEEN 1 AND 12),
    birth_date    date,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT students_tenant_phone_key UNIQUE (tenant_id, phone)
);

CREATE TABLE enrollments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lecture_id  bigint NOT NULL REFERENCES lectures (id),
    student_id  bigint NOT NULL REFERENCES students (id),
    import_id   uuid,
    enrolled_at timestamptz NOT NULL,
    CONSTRAINT enrollments_lecture_student_key UNIQUE (lecture_id, student_id)
);
CREATE INDEX enrollments_student_idx ON enrollments (student_id);

CREATE TABLE videos (
    id           uuid PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    status       text NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    attempt      integer NOT NULL,
    status_rank  smallint NOT NULL,
    source_key   text,
    hls_key      text,
    duration_s   double precision,
    renditions   jsonb,
    error        text,
    queued_at    timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX videos_tenant_idx ON videos (tenant_id);

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
    dead_intents    integer NOT NULL DEFAULT 0,
    empty_slots     integer,
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
    retried_at  timestamptz,
    message_id  text
);
CREATE INDEX writer_dead_letters_failed_at_idx ON writer_dead_letters (failed_at);
-- The broker's id of the message: a message recorded again after a crash keeps one letter.
CREATE UNIQUE INDEX writer_dead_letters_message_id_key ON writer_dead_letters (message_id);

-- Migrations of plug-in kinds (jobplatform.kinds.Kind.migrations), applied once each by kind.
CREATE TABLE writer_kind_migrations (
    kind        text NOT NULL,
    version     integer NOT NULL,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, version)
);
