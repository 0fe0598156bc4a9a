-- The sensei schema as the first release that recorded a version (1) created it.
CREATE SCHEMA IF NOT EXISTS sensei;
CREATE TABLE IF NOT EXISTS sensei.rollback_runs (
    rollback_id      text PRIMARY KEY,
    migration_id     text NOT NULL,
    status           text NOT NULL,
    strategy         text,
    dry_run          boolean NOT NULL DEFAULT false,
    request          jsonb NOT NULL DEFAULT '{}',
    plan             jsonb,
    status_document  jsonb,
    report           jsonb,
    report_markdown  text,
    triggered_by     text,
    reason           text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rollback_runs_by_migration ON sensei.rollback_runs (migration_id, started_at DESC);
CREATE TABLE IF NOT EXISTS sensei.table_baselines (
    migration_id     text NOT NULL,
    target_table     text NOT NULL,
    rows_before      bigint NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, target_table)
);
CREATE TABLE IF NOT EXISTS sensei.audit_events (
    seq              bigint PRIMARY KEY,
    recorded_at      timestamptz NOT NULL,
    rollback_id      text,
    migration_id     text,
    task_id          text,
    try_number       integer,
    step             text NOT NULL,
    action           text NOT NULL,
    actor            text,
    payload          text NOT NULL,
    prev_hash        text NOT NULL,
    hash             text NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS audit_events_by_run ON sensei.audit_events (rollback_id, seq);
CREATE OR REPLACE FUNCTION sensei.audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sensei.audit_events is append-only: % is not allowed', TG_OP;
END $$;
CREATE OR REPLACE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON sensei.audit_events
    FOR EACH ROW EXECUTE FUNCTION sensei.audit_events_append_only();
CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON sensei.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION sensei.audit_events_append_only();
CREATE TABLE IF NOT EXISTS sensei.schema_version (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS sensei.rollback_locks (
    migration_id     text PRIMARY KEY,
    rollback_id      text NOT NULL,
    acquired_at      timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sensei.consumer_holds (
    id               bigserial PRIMARY KEY,
    migration_id     text NOT NULL,
    rollback_id      text NOT NULL,
    kind             text NOT NULL,
    name             text NOT NULL,
    object           text NOT NULL DEFAULT '',
    detail           jsonb NOT NULL DEFAULT '{}',
    halted_at        timestamptz NOT NULL DEFAULT now(),
    resumed_at       timestamptz,
    resumed_by       text
);
CREATE UNIQUE INDEX IF NOT EXISTS consumer_holds_open
    ON sensei.consumer_holds (migration_id, kind, name, object) WHERE resumed_at IS NULL;
